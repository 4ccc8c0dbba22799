#!/usr/bin/env python3
"""The shared-filesystem messenger against HTTP: latency per job, dispatch rate.

(a) latency: one harvester with two queues, one reached over HTTP, one through
    the messenger folder; one real pilot each (``pilot.main``, warm workers
    off, the same polling). ``--latency-jobs`` one-job tasks (``true`` in the
    base image) are submitted one after another to each queue; a job's time is
    from ``activated`` to ``finished`` in its state history (dispatch, the
    container, the reports). The messenger's added latency per job is the
    difference of the medians.
(b) dispatch rate: ``--jobs`` activated jobs on one queue, and ``--pilots``
    simulated pilots, each a process of its own running the real pilot's link
    (:class:`pilot.messenger.SharedFsLink`, or :class:`pilot.server.PilotServer`
    for HTTP): acquire one job, report it running, report it finished, again,
    until none is left. Jobs finished per second, from the first acquire to
    the last report.

Every figure is the median of ``--repeat`` runs; each run has a fresh database.

    python bench/messenger.py [--latency-jobs 10] [--pilots 20] [--jobs 400] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from campaign_steps import first_mark
from dispatch import QUEUE, seed
from local_harvester import create_token, harvester, new_home, wait_for_job

from harvester.client.http import HarvesterClient
from pilot.link import HarvesterLink
from pilot.messenger import SharedFsLink
from pilot.server import PilotServer

QUEUES = """
[queues.ANALY_HTTP]
provider = "local"
maxWorkers = 0

[queues.ANALY_FS]
provider = "local"
maxWorkers = 0
messenger = "shared_fs"
messenger_dir = {folder}

[queues.{bench_queue}]
provider = "local"
maxWorkers = 0
{bench_messenger}
"""
PILOT = [sys.executable, "-m", "pilot.main"]
PILOT_POLLING = ["--max-idle", "600", "--poll", "0.2", "--poll-max", "1", "--no-warm"]
"""Both latency pilots poll alike; no warm workers: every job starts its container."""


def settings(folder: Path, bench_via_fs: bool) -> str:
    quoted = json.dumps(str(folder))
    return QUEUES.format(
        folder=quoted,
        bench_queue=QUEUE,
        bench_messenger=f'messenger = "shared_fs"\nmessenger_dir = {quoted}'
        if bench_via_fs
        else "",
    )


@contextmanager
def bench_harvester(
    bench_via_fs: bool = False, seeded_jobs: int = 0
) -> Iterator[tuple[dict[str, str], Path, str]]:
    """A harvester (fresh SQLite database, with ``seeded_jobs`` activated jobs on the bench
    queue) with the three queues; yields the user's client environment, the messenger
    folder and a pilot token."""
    home = new_home("hpcaf-messenger-")
    folder = home / "messenger"
    folder.mkdir()
    if seeded_jobs:
        seed(f"sqlite:///{home / 'harvester.db'}", seeded_jobs)
    with harvester(home, settings(folder, bench_via_fs)) as env:
        yield env, folder, create_token(env, "pilots", "pilot")


# -- (a) latency per job -------------------------------------------------------------


def start_pilot(env: dict[str, str], token: str, queue: str, reach: list[str]) -> Any:
    return subprocess.Popen(
        [*PILOT, *reach, "--queue", queue, *PILOT_POLLING],
        env={**env, "HPCAF_TOKEN": token},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def job_latency(client: HarvesterClient, queue: str) -> float:
    """Seconds from ``activated`` to ``finished`` of one one-job task on ``queue``."""
    task = client.submit_task(
        {"containerImage": "base", "exec": "true", "outDS": "user.bench.messenger", "site": queue}
    )
    job = wait_for_job(client, task["jediTaskID"], 120, poll_s=0.05)
    history = client.get(f"/api/v1/jobs/{job['id']}/history")
    activated, finished = first_mark(history, "activated"), first_mark(history, "finished")
    assert activated is not None and finished is not None
    return finished - activated


def latency_run(n_jobs: int) -> dict[str, float]:
    with bench_harvester() as (env, folder, token):
        pilots = [
            start_pilot(env, token, "ANALY_HTTP", ["--server", env["HPCAF_URL"]]),
            start_pilot(env, token, "ANALY_FS", ["--messenger-dir", str(folder)]),
        ]
        try:
            with HarvesterClient(env["HPCAF_URL"], env["HPCAF_TOKEN"]) as client:
                medians = {}
                for queue in ("ANALY_HTTP", "ANALY_FS"):
                    job_latency(client, queue)  # the pilot's first job: not counted
                    times = [job_latency(client, queue) for _ in range(n_jobs)]
                    medians[queue] = statistics.median(times)
                return medians
        finally:
            for pilot in pilots:
                pilot.terminate()
                pilot.wait()


# -- (b) dispatch rate -----------------------------------------------------------------


def simulated_pilot(
    via: str, where: str, token: str, number: int, start: Any, results: Any
) -> None:
    """One pilot process: acquire, running, finished, until the queue is empty; puts
    (jobs done, time of its last report) on ``results``. It starts when every pilot is
    ready (``start``, a barrier), so that no process start is timed."""
    pilot_id = f"bench:{number}"
    link: HarvesterLink = (
        SharedFsLink(Path(where), token, pilot_id) if via == "fs" else PilotServer(where, token)
    )
    done, last = 0, 0.0
    start.wait()
    try:
        while jobs := link.acquire_jobs({"queue": QUEUE, "pilot_id": pilot_id, "n_jobs": 1}):
            job_id = getattr(jobs[0], "job_id", None)
            assert job_id is not None, jobs[0]
            for state in ("running", "finished"):
                link.update_job({"job_id": job_id, "pilot_id": pilot_id, "state": state})
            done += 1
            last = time.time()
    finally:
        link.close()
        results.put((done, last))


def dispatch_run(via: str, n_pilots: int, n_jobs: int) -> float:
    """Jobs finished per second through ``via`` ("http" or "fs"), from the moment every
    pilot is ready to the last report."""
    spawn = multiprocessing.get_context("spawn")
    start, results = spawn.Barrier(n_pilots + 1), spawn.Queue()
    with bench_harvester(bench_via_fs=via == "fs", seeded_jobs=n_jobs) as (env, folder, token):
        where = str(folder) if via == "fs" else env["HPCAF_URL"]
        pilots = [
            spawn.Process(target=simulated_pilot, args=(via, where, token, i, start, results))
            for i in range(n_pilots)
        ]
        for pilot in pilots:
            pilot.start()
        start.wait()
        began = time.time()
        ended = [results.get(timeout=600) for _ in pilots]
        for pilot in pilots:
            pilot.join()
    done = sum(count for count, _ in ended)
    if done != n_jobs:
        raise RuntimeError(f"{done} of {n_jobs} jobs finished through {via}")
    return done / (max(last for _, last in ended) - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-jobs", type=int, default=10)
    parser.add_argument("--pilots", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-rate", action="store_true")
    args = parser.parse_args()

    if not args.skip_latency:
        runs = [latency_run(args.latency_jobs) for _ in range(args.repeat)]
        http = [r["ANALY_HTTP"] for r in runs]
        fs = [r["ANALY_FS"] for r in runs]
        added = [f - h for f, h in zip(fs, http, strict=True)]
        print(f"(a) a one-job task, activated to finished, median of {args.latency_jobs} jobs:")
        print(f"    HTTP             {_runs(http, 's')}")
        print(f"    shared folder    {_runs(fs, 's')}")
        print(f"    added per job    {_runs(added, 's')}")
    if not args.skip_rate:
        print(f"(b) dispatch rate, {args.pilots} pilots, {args.jobs} jobs (jobs finished/s):")
        for via, label in (("http", "HTTP"), ("fs", "shared folder")):
            rates = [dispatch_run(via, args.pilots, args.jobs) for _ in range(args.repeat)]
            print(f"    {label:<16} {_runs(rates, '/s')}")


def _runs(values: list[float], unit: str) -> str:
    shown = ", ".join(f"{v:.3f}" for v in values)
    return f"median {statistics.median(values):.3f}{unit}  (runs {shown})"


if __name__ == "__main__":
    main()
