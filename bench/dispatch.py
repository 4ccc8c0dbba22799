#!/usr/bin/env python3
"""Dispatcher throughput: P simulated pilots acquire, start and finish jobs over HTTP.

For each P, a fresh database gets one task of J activated jobs (empty payload,
no outputs) on a queue no harvester agent provisions, ``harvester serve --only
api`` is started on it, and P asyncio pilots on loopback loop for at most S
seconds: ``acquire_jobs`` for N jobs, one bulk ``update_jobs`` to running, one
to finished; a pilot that gets nothing polls again after a second (as real
pilots do). A run ends when every job is finished or after S seconds.

Prints jobs finished per second (each one dispatched, started and finished),
and p50/p99 latency of the acquire and update calls. SQLite by default;
``--database-url`` for PostgreSQL (``scripts/postgres up``; the database is
emptied for each run).

    python bench/dispatch.py [--pilots 10,100,1000] [--jobs 20000] [--per-acquire 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from local_harvester import fresh_database, harvester, new_home
from sqlalchemy import insert

from db.models import Job, Task, utcnow

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
                    "params": {"outputs": [], "exec": "true"},
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
    engine.dispose()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def post(client: object, path: str, body: dict) -> object:
    """POST with the retries of a real pilot: a connection the server closed is re-opened."""
    import httpx

    assert isinstance(client, httpx.AsyncClient)
    for attempt in range(5):
        try:
            reply = await client.post(path, json=body)
            reply.raise_for_status()
            return reply
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError):
            if attempt == 4:
                raise
            await asyncio.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


async def pilot(
    client: object,
    name: str,
    per_acquire: int,
    deadline: float,
    acquire_ms: list[float],
    update_ms: list[float],
    finished: list[int],
    state: dict[str, float],
) -> None:
    import httpx

    assert isinstance(client, httpx.AsyncClient)
    while time.monotonic() < deadline and not state["end"]:
        start = time.perf_counter()
        reply = await post(
            client,
            "/api/v1/pilot/acquire_jobs",
            {"queue": QUEUE, "pilot_id": name, "n_jobs": per_acquire},
        )
        acquire_ms.append((time.perf_counter() - start) * 1000)
        jobs = reply.json()["jobs"]  # type: ignore[attr-defined]
        if not jobs:
            await asyncio.sleep(1.0)
            continue
        for report in ("running", "finished"):
            body = {
                "updates": [
                    {"job_id": j["job_id"], "pilot_id": name, "state": report, "exit_code": 0}
                    if report == "finished"
                    else {"job_id": j["job_id"], "pilot_id": name, "state": report}
                    for j in jobs
                ]
            }
            start = time.perf_counter()
            reply = await post(client, "/api/v1/pilot/update_jobs", body)
            update_ms.append((time.perf_counter() - start) * 1000)
            errors = [item for item in reply.json() if item.get("error")]  # type: ignore[attr-defined]
            if errors:
                raise RuntimeError(f"{name}: {errors[0]}")
        finished.append(len(jobs))
        if sum(finished) >= state["target"]:
            state["end"] = time.monotonic()


async def drive(
    url: str, token: str, pilots: int, per_acquire: int, seconds: float, n_jobs: int
) -> dict:
    import httpx

    acquire_ms: list[float] = []
    update_ms: list[float] = []
    finished: list[int] = []
    limits = httpx.Limits(max_connections=min(pilots, 256), max_keepalive_connections=256)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120, limits=limits
    ) as client:
        state = {"target": float(n_jobs), "end": 0.0}
        start = time.monotonic()
        deadline = start + seconds
        await asyncio.gather(
            *[
                pilot(
                    client,
                    f"bench-pilot-{i}",
                    per_acquire,
                    deadline,
                    acquire_ms,
                    update_ms,
                    finished,
                    state,
                )
                for i in range(pilots)
            ]
        )
        wall = (state["end"] or time.monotonic()) - start
    return {
        "wall": wall,
        "finished": sum(finished),
        "acquire_ms": acquire_ms,
        "update_ms": update_ms,
    }


def run_one(
    url: str | None, pilots: int, n_jobs: int, per_acquire: int, seconds: float, api_workers: int
) -> dict:
    home = new_home("hpcaf-bench-d-")
    db_url = url or f"sqlite:///{home / 'harvester.db'}"
    seed(db_url, n_jobs)
    config = f'[queues.{QUEUE}]\nprovider = "local"\nmaxWorkers = 0\n'
    serve_args = ("--only", "api", "--workers", str(api_workers))
    with harvester(home, config, serve_args=serve_args, database_url=db_url, role="pilot") as env:
        return asyncio.run(
            drive(env["HPCAF_URL"], env["HPCAF_TOKEN"], pilots, per_acquire, seconds, n_jobs)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pilots", default="10,100,1000")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs seeded per run")
    parser.add_argument("--per-acquire", type=int, default=10, help="jobs per acquire_jobs")
    parser.add_argument("--seconds", type=float, default=20.0, help="time bound per run")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--api-workers", type=int, default=1, help="harvester API processes")
    args = parser.parse_args()
    backend = (args.database_url or "sqlite").split(":")[0].split("+")[0]
    print(
        f"{backend}, {os.cpu_count()} cores, {args.api_workers} API processes, "
        f"{args.per_acquire} jobs per acquire, "
        f"{args.jobs} jobs seeded, at most {args.seconds:.0f}s per run"
    )
    print(
        f"{'pilots':>6s} {'jobs done':>9s} {'jobs/s':>8s} {'acquire p50':>11s} "
        f"{'p99':>7s} {'update p50':>10s} {'p99':>7s} {'calls':>7s}"
    )
    for pilots in [int(p) for p in args.pilots.split(",")]:
        r = run_one(
            args.database_url, pilots, args.jobs, args.per_acquire, args.seconds, args.api_workers
        )
        rate = r["finished"] / r["wall"]
        a, u = r["acquire_ms"], r["update_ms"]
        print(
            f"{pilots:6d} {r['finished']:9d} {rate:8.0f} {statistics.median(a):9.1f}ms "
            f"{percentile(a, 0.99):5.0f}ms {statistics.median(u) if u else float('nan'):8.1f}ms "
            f"{percentile(u, 0.99):5.0f}ms {len(a) + len(u):7d}"
        )


if __name__ == "__main__":
    main()
