#!/usr/bin/env python3
"""Whole-node pilots: 1-core jobs in 2-core slots, packed against one job per slot.

A harvester with one local queue of 2-core slots (``--slots`` of them, default 1:
this machine's two cores) runs a task of ``--jobs`` CPU-bound 1-core jobs (a
Python loop of about ``--work-s`` seconds in the base image), once with the
pilots packing jobs (``packJobs = true``, the default) and once with one job at
a time (``packJobs = false``, what every pilot did before). Each mode runs
``--repeat`` times, alternating; printed: the medians of the time from
submission to the task's end, jobs per minute, and how many jobs ran at once
on average (busy job-seconds over the makespan, from the payloads' own clocks).

    python bench/whole_node.py [--jobs 8] [--work-s 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from local_harvester import harvester, new_home

QUEUE = """
[queues.ANALY_NODE]
provider = "local"
cores = 2
memory_mb = 4000
maxWalltime = 3600
maxWorkers = {slots}
nQueueLimitWorker = {slots}
maxNewWorkersPerCycle = {slots}
packJobs = {pack}
"""

# about work_s seconds of one core, whatever the job's neighbours do
PAYLOAD = (
    "python3 -c 'import time\n"
    "s=time.time()\n"
    "x=0\n"
    "for i in range({loops}): x+=i*i\n"
    'open("t.txt","w").write(f"{{s}} {{time.time()}}")\''
)


def calibrate(work_s: float) -> int:
    """Loop iterations that take ``work_s`` seconds of one core here."""
    loops = 2_000_000
    start = time.perf_counter()
    x = 0
    for i in range(loops):
        x += i * i
    per_loop = (time.perf_counter() - start) / loops
    return int(work_s / per_loop)


def run_once(pack: bool, slots: int, jobs: int, loops: int) -> tuple[float, float]:
    """Makespan (s) and mean concurrency of one task of ``jobs`` 1-core jobs."""
    home = new_home("hpcaf-bench-node-")
    config = QUEUE.format(slots=slots, pack="true" if pack else "false")
    client = [sys.executable, "-m"]
    with harvester(home, config) as env:
        start = time.time()
        subprocess.run(
            [*client, "harvester.client.pcontainer", "--site", "ANALY_NODE",
             "--containerImage", "base", "--nJobs", str(jobs), "--exec",
             PAYLOAD.format(loops=loops), "--outputs", "t.txt", "--outDS", "user.bench.node"],
            env=env, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        subprocess.run(
            [*client, "harvester.client.pbook", "wait", "1"],
            env=env, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        makespan = time.time() - start
        with tempfile.TemporaryDirectory() as out:
            subprocess.run(
                [*client, "harvester.client.pbook", "results", "1", "-o", out],
                env=env, check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            spans = [tuple(map(float, p.read_text().split())) for p in Path(out).iterdir()]
    assert len(spans) == jobs, f"{len(spans)} results for {jobs} jobs"
    busy = sum(end - begin for begin, end in spans)
    window = max(e for _, e in spans) - min(b for b, _ in spans)
    return makespan, busy / window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--work-s", type=float, default=2.0)
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    loops = calibrate(args.work_s)
    figures: dict[str, list[tuple[float, float]]] = {"packed": [], "one job per slot": []}
    for _ in range(args.repeat):
        for name, pack in (("packed", True), ("one job per slot", False)):
            figures[name].append(run_once(pack, args.slots, args.jobs, loops))
    summary = {}
    for name, runs in figures.items():
        makespan = statistics.median(m for m, _ in runs)
        summary[name] = {
            "makespan_s": round(makespan, 1),
            "jobs_per_min": round(args.jobs / makespan * 60, 1),
            "mean_concurrency": round(statistics.median(c for _, c in runs), 2),
            "runs_s": [round(m, 1) for m, _ in runs],
        }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"{args.jobs} jobs of ~{args.work_s:.0f} s CPU, {args.slots} slot(s) of 2 cores, "
        f"median of {args.repeat}"
    )
    print(f"{'mode':<18} {'makespan':>9} {'jobs/min':>9} {'at once':>8}  runs")
    for name, row in summary.items():
        print(
            f"{name:<18} {row['makespan_s']:>8.1f}s {row['jobs_per_min']:>9.1f} "
            f"{row['mean_concurrency']:>8.2f}  {row['runs_s']}"
        )


if __name__ == "__main__":
    main()
