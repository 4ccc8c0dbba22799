#!/usr/bin/env python3
"""Dispatcher throughput: P simulated pilots acquire, start and finish jobs over HTTP.

For each P, a fresh database gets one task of J activated jobs (no outputs) on a
queue no harvester agent provisions, ``harvester serve --only api`` is started on
it, and P asyncio pilots on loopback (one keep-alive connection each) loop for at
most S seconds: ``acquire_jobs`` for N jobs, one bulk ``update_jobs`` to running,
the payload, one to finished. A pilot that gets nothing waits as the real pilot
does (:class:`pilot.polling.PollBackoff`: 1 s, growing 1.5 times to 30 s,
jittered). A run ends when every job is finished or after S seconds.

Two regimes:

* throughput (``--payload-s 0``, the default): empty payloads, every pilot
  asks again at once, all start together: the most the dispatcher can do;
* a polling fleet (``--payload-s 10 --per-acquire 1``): payloads of 5 to 15 s,
  pilots started over 10 s as a batch system starts them, and idle polling
  once the queue runs dry: the latency a production fleet sees.

Prints jobs finished per second (each one dispatched, started and finished),
the acquires (and how many found nothing), and p50/p99 latency of the acquire
and update calls. SQLite by default; ``--database-url`` for PostgreSQL
(``scripts/postgres up``; the database is emptied for each run).

    python bench/dispatch.py [--pilots 10,100,1000] [--jobs 20000] [--per-acquire 10]
    python bench/dispatch.py --pilots 1000 --jobs 3000 --per-acquire 1 --payload-s 10 \\
        --seconds 60 --api-workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from dataclasses import dataclass, field

from lean_http import Connection
from local_harvester import fresh_database, harvester, new_home
from sqlalchemy import insert

from db.models import Job, Task, utcnow
from pilot.polling import PollBackoff

QUEUE = "ANALY_BENCH"


def seed(url: str, n_jobs: int) -> None:
    engine = fresh_database(url)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            insert(Task),
            [
                {
                    "id": 1,
                    "name": "dispatch bench",
                    "owner": "bench",
                    "status": "running",
                    "kind": "runcontainer",
                    # as submit_task stores them: at least the required parameters
                    "params": {
                        "containerImage": "base",
                        "outDS": "user.bench.dispatch",
                        "outputs": [],
                        "exec": "true",
                    },
                    "image": "base",
                    "out_ds": "user.bench.dispatch",
                    "n_jobs": n_jobs,
                    "priority": 1000,
                    "max_attempt": 1,
                    "created_at": now,
                    "modified_at": now,
                }
            ],
        )
        rows = [
            {
                "task_id": 1,
                "job_index": i,
                "attempt_nr": 1,
                "status": "activated",
                "queue": QUEUE,
                "spec": {},
                "cores": 1,
                "memory_mb": 0,
                "gpus": 0,
                "walltime_s": 0,
                "priority": 1000,
                "created_at": now,
                "modified_at": now,
            }
            for i in range(n_jobs)
        ]
        for i in range(0, len(rows), 10_000):
            conn.execute(insert(Job), rows[i : i + 10_000])
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT setval('tasks_id_seq', 1)")
            # statistics, as autovacuum would gather them on a table that did not appear a
            # second ago: without them the claim's plan can be a poor one
            conn.exec_driver_sql("ANALYZE jobs")
    engine.dispose()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Run:
    """What one benchmark run measured."""

    pilots: int
    payload_s: float
    seconds: float
    per_acquire: int
    target: int
    ramp_s: float = 0.0
    """Pilots start spread over this long, as a batch system starts a fleet."""
    acquire_ms: list[float] = field(default_factory=list)
    empty_acquires: int = 0
    update_ms: list[float] = field(default_factory=list)
    finished: int = 0
    ended_at: float = 0.0


async def pilot(conn: Connection, name: str, run: Run, deadline: float, seed: int) -> None:
    """One simulated pilot: the real pilot's loop with the payload replaced by a sleep."""
    rng = random.Random(seed)
    backoff = PollBackoff(rng=rng)
    await asyncio.sleep(rng.uniform(0, run.ramp_s))
    while time.monotonic() < deadline and not run.ended_at:
        start = time.perf_counter()
        reply = await conn.post(
            "/api/v1/pilot/acquire_jobs",
            {"queue": QUEUE, "pilot_id": name, "n_jobs": run.per_acquire},
        )
        run.acquire_ms.append((time.perf_counter() - start) * 1000)
        jobs = reply["jobs"]
        if not jobs:
            run.empty_acquires += 1
            await asyncio.sleep(min(backoff.next_wait(), max(0.0, deadline - time.monotonic())))
            continue
        backoff.reset()
        await report(conn, name, jobs, "running", run)
        if run.payload_s:
            payload = rng.uniform(0.5, 1.5) * run.payload_s
            left = deadline - time.monotonic()
            if payload > left:  # the run ends during this payload
                await asyncio.sleep(max(0.0, left))
                return
            await asyncio.sleep(payload)
        await report(conn, name, jobs, "finished", run)
        run.finished += len(jobs)
        if run.finished >= run.target:
            run.ended_at = time.monotonic()


async def report(conn: Connection, name: str, jobs: list[dict], state: str, run: Run) -> None:
    extra = {"exit_code": 0} if state == "finished" else {}
    body = {
        "updates": [
            {"job_id": j["job_id"], "pilot_id": name, "state": state, **extra} for j in jobs
        ]
    }
    start = time.perf_counter()
    reply = await conn.post("/api/v1/pilot/update_jobs", body)
    run.update_ms.append((time.perf_counter() - start) * 1000)
    errors = [item for item in reply if item.get("error")]
    if errors:
        raise RuntimeError(f"{name}: {errors[0]}")


async def drive(url: str, token: str, run: Run) -> float:
    """Run every pilot to the deadline (or until every job is finished); the wall time."""
    host, port = url.removeprefix("http://").split(":")
    connections = [Connection(host, int(port), token) for _ in range(run.pilots)]
    start = time.monotonic()
    deadline = start + run.seconds
    try:
        await asyncio.gather(
            *[
                pilot(conn, f"bench-pilot-{i}", run, deadline, seed=i)
                for i, conn in enumerate(connections)
            ]
        )
    finally:
        await asyncio.gather(*[conn.close() for conn in connections])
    return (run.ended_at or time.monotonic()) - start


def run_one(url: str | None, run: Run, n_jobs: int, api_workers: int) -> float:
    """Seed, serve and drive one run; the wall time."""
    home = new_home("hpcaf-bench-d-")
    db_url = url or f"sqlite:///{home / 'harvester.db'}"
    seed(db_url, n_jobs)
    config = f'[queues.{QUEUE}]\nprovider = "local"\nmaxWorkers = 0\n'
    serve_args = ("--only", "api", "--workers", str(api_workers))
    with harvester(home, config, serve_args=serve_args, database_url=db_url, role="pilot") as env:
        return asyncio.run(drive(env["HPCAF_URL"], env["HPCAF_TOKEN"], run))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pilots", default="10,100,1000")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs seeded per run")
    parser.add_argument("--per-acquire", type=int, default=10, help="jobs per acquire_jobs")
    parser.add_argument(
        "--payload-s",
        type=float,
        default=0.0,
        help="mean payload time (0: empty payloads, each pilot polls again at once)",
    )
    parser.add_argument(
        "--ramp-s", type=float, default=0.0, help="pilots start spread over this long"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="time bound per run")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--api-workers", type=int, default=1, help="harvester API processes")
    args = parser.parse_args()
    backend = (args.database_url or "sqlite").split(":")[0].split("+")[0]
    payload = f"payloads of {args.payload_s:g}s (±50%)" if args.payload_s else "empty payloads"
    if args.ramp_s:
        payload += f", pilots started over {args.ramp_s:g}s"
    print(
        f"{backend}, {os.cpu_count()} cores, {args.api_workers} API processes, "
        f"{args.per_acquire} jobs per acquire, {payload}, "
        f"{args.jobs} jobs seeded, at most {args.seconds:.0f}s per run"
    )
    print(
        f"{'pilots':>6s} {'jobs done':>9s} {'jobs/s':>8s} {'acquires':>8s} {'empty':>6s} "
        f"{'acquire p50':>11s} {'p99':>7s} {'update p50':>10s} {'p99':>7s}"
    )
    for pilots in [int(p) for p in args.pilots.split(",")]:
        run = Run(pilots, args.payload_s, args.seconds, args.per_acquire, args.jobs, args.ramp_s)
        wall = run_one(args.database_url, run, args.jobs, args.api_workers)
        a, u = run.acquire_ms, run.update_ms
        print(
            f"{pilots:6d} {run.finished:9d} {run.finished / wall:8.0f} {len(a):8d} "
            f"{run.empty_acquires:6d} {statistics.median(a):9.1f}ms {percentile(a, 0.99):5.0f}ms "
            f"{statistics.median(u) if u else float('nan'):8.1f}ms {percentile(u, 0.99):5.0f}ms"
        )


if __name__ == "__main__":
    main()
