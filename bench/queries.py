#!/usr/bin/env python3
"""Monitor queries on a big database: latency of each list and summary over HTTP.

Seeds a database with T tasks and J jobs (default 1,000 and 100,000; several
owners, queues, states and error codes, spread over 30 days), starts
``harvester serve --only api`` on it, and times each query the dashboard and
``pbook`` make (median and worst of R repeats, the client's view, HTTP
included). SQLite by default; ``--database-url postgresql+psycopg://…`` for
PostgreSQL (e.g. from ``scripts/postgres up``; the database is emptied first).

    python bench/queries.py [--jobs 100000] [--repeats 20]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from datetime import UTC, datetime, timedelta

from local_harvester import fresh_database, harvester, new_home
from sqlalchemy import insert

from db.models import Job, Task

OWNERS = ["alice", "bob", "carol", "dave", "erin"]
QUEUES = ["ANALY_LOCAL", "ANALY_SLURM", "ANALY_SLURM_GPU", "ANALY_CONDOR"]
JOB_STATES = (
    ["finished"] * 70 + ["failed"] * 8 + ["closed"] * 6 + ["running"] * 8 + ["activated"] * 8
)
ERRORS = [1305, 1213, 1100, 1137, 1306]


def seed(url: str, n_tasks: int, n_jobs: int) -> None:
    engine = fresh_database(url)
    rng = random.Random(1)
    start = datetime.now(UTC) - timedelta(days=30)
    tasks = []
    for i in range(n_tasks):
        created = start + timedelta(minutes=rng.randrange(30 * 24 * 60))
        tasks.append(
            {
                "id": i + 1,
                "name": f"task {i} {'staus' if i % 3 == 0 else 'scan'}",
                "owner": OWNERS[i % len(OWNERS)],
                "status": rng.choice(["done", "finished", "running", "failed"]),
                "kind": rng.choice(["runcontainer", "pyhf_fit", "hpo_eval"]),
                "params": {},
                "image": "base",
                "out_ds": f"user.{OWNERS[i % len(OWNERS)]}.t{i}",
                "n_jobs": n_jobs // n_tasks,
                "priority": 1000,
                "max_attempt": 3,
                "created_at": created,
                "modified_at": created,
            }
        )
    jobs = []
    per_task = n_jobs // n_tasks
    for t in tasks:
        for j in range(per_task):
            status = rng.choice(JOB_STATES)
            failed = status in ("failed", "closed")
            created = t["created_at"] + timedelta(seconds=j)
            jobs.append(
                {
                    "task_id": t["id"],
                    "job_index": j,
                    "attempt_nr": 1,
                    "status": status,
                    "queue": rng.choice(QUEUES),
                    "spec": {},
                    "cores": 1,
                    "memory_mb": 0,
                    "gpus": 0,
                    "walltime_s": 0,
                    "priority": 1000,
                    "pilot_error_code": rng.choice(ERRORS) if failed else None,
                    "pilot_error_diag": "payload exited with code 1" if failed else None,
                    "created_at": created,
                    "modified_at": created,
                    "ended_at": created + timedelta(minutes=5) if status != "running" else None,
                }
            )
    with engine.begin() as conn:
        conn.execute(insert(Task), tasks)
        for i in range(0, len(jobs), 10_000):
            conn.execute(insert(Job), jobs[i : i + 10_000])
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE")
            conn.exec_driver_sql("SELECT setval('tasks_id_seq', (SELECT max(id) FROM tasks))")
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    import httpx

    home = new_home("hpcaf-bench-q-")
    url = args.database_url or f"sqlite:///{home / 'harvester.db'}"
    t0 = time.time()
    seed(url, args.tasks, args.jobs)
    print(
        f"seeded {args.tasks} tasks and {args.jobs} jobs in {time.time() - t0:.1f}s "
        f"({url.split(':')[0]})"
    )
    queries = [
        ("task list, newest 100", "/api/v1/tasks", {"owner": "*"}),
        (
            "task list, one owner, 2 states",
            "/api/v1/tasks",
            {"owner": "bob", "status": ["running", "failed"]},
        ),
        ("task list, name pattern", "/api/v1/tasks", {"owner": "*", "name": "*staus*"}),
        (
            "task list, sorted by name, page 5",
            "/api/v1/tasks",
            {"owner": "*", "sort": "name", "offset": 400},
        ),
        ("one task with job counts", "/api/v1/tasks/500", {}),
        ("jobs of one task", "/api/v1/jobs", {"task": 500}),
        (
            "failed jobs of a queue, newest 100",
            "/api/v1/jobs",
            {"status": "failed", "queue": "ANALY_SLURM"},
        ),
        (
            "jobs ended in one day",
            "/api/v1/jobs",
            {
                "ended_after": (datetime.now(UTC) - timedelta(days=3)).isoformat(),
                "ended_before": (datetime.now(UTC) - timedelta(days=2)).isoformat(),
            },
        ),
        ("jobs of one owner, page 10", "/api/v1/jobs", {"owner": "carol", "offset": 900}),
        ("job counts by queue (all jobs)", "/api/v1/jobs/summary", {"group_by": "queue"}),
        (
            "job counts by task, one owner",
            "/api/v1/jobs/summary",
            {"group_by": "task", "owner": "dave"},
        ),
        ("error summary (all jobs)", "/api/v1/jobs/errors", {}),
        ("error summary, one queue", "/api/v1/jobs/errors", {"queue": "ANALY_LOCAL"}),
        ("workers per queue", "/api/v1/workers/summary", {}),
    ]
    serve_args = ("--only", "api")
    with (
        harvester(home, "", serve_args=serve_args, database_url=url, role="admin") as env,
        httpx.Client(
            base_url=env["HPCAF_URL"],
            headers={"Authorization": f"Bearer {env['HPCAF_TOKEN']}"},
            timeout=30,
        ) as c,
    ):
        print(f"\n{'query':40s} {'median':>8s} {'worst':>8s} {'rows':>7s}")
        for label, path, params in queries:
            times = []
            total = None
            for _ in range(args.repeats):
                start = time.perf_counter()
                reply = c.get(path, params=params)
                times.append((time.perf_counter() - start) * 1000)
                reply.raise_for_status()
                body = reply.json()
                total = body.get("total") if isinstance(body, dict) else len(body)
            print(
                f"{label:40s} {statistics.median(times):6.1f}ms {max(times):6.1f}ms {total!s:>7s}"
            )


if __name__ == "__main__":
    main()
