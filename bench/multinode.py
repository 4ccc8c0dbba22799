#!/usr/bin/env python3
"""A 2-node job's overhead: from submission to all ranks running, on the Slurm dev cluster.

``scripts/slurm-cluster up`` (two slurmd nodes on this machine) must be up, with
``SLURM_CONF`` exported, and the ``mpi`` image in the image cache. A harvester
with one queue of two-node allocations gets ``--repeat`` one-job tasks of
``--nNodes 2 --nCore 2``, one after another, each waiting for the previous
task's worker to end, so that every job pays for its own allocation (sbatch,
the pilot's start on the first node, the acquire, srun, and four containers).
Each rank prints the moment it started; the job's overhead is the last rank's
start minus the moment of submission. The steps in between come from the
worker's and the job's state histories.

    scripts/slurm-cluster up && export SLURM_CONF=/tmp/hpcaf-slurm/slurm.conf
    python bench/multinode.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from campaign_steps import epoch, first_mark
from local_harvester import harvester, new_home, wait_for_job

from harvester.client.http import HarvesterClient

QUEUE = """
[queues.ANALY_MN]
provider = "slurm"
cores = 2
memory_mb = 500
maxWalltime = 600
maxNodes = 2
allow_network = true
maxWorkers = 1

[queues.ANALY_MN.provider_options]
partition = "debug"
slurm_conf = {conf}
polling_interval_s = 1
"""

RANK_START = (
    "python3 -c \"import os, time; print('rank-start', os.environ['HPCAF_RANK'], time.time())\""
)

RANK_LINE = re.compile(r"rank-start \d+ ([0-9.]+)$", re.MULTILINE)


def one_job(client: HarvesterClient) -> dict[str, float]:
    """Submit one 2-node job and wait for it; its steps in seconds since submission."""
    submitted = time.time()
    reply = client.submit_task(
        {
            "containerImage": "mpi",
            "exec": RANK_START,
            "outDS": "user.bench.multinode",
            "site": "ANALY_MN",
            "nNodes": 2,
            "coreCount": 2,
        }
    )
    task_id = reply["jediTaskID"]
    job = wait_for_job(client, task_id, 300)
    log = client.request("GET", f"/api/v1/jobs/{job['id']}/log").text
    starts = [float(m.group(1)) for m in RANK_LINE.finditer(log)]
    if len(starts) != 4:
        raise RuntimeError(f"task {task_id}: {len(starts)} ranks said they started:\n{log}")
    history = client.get(f"/api/v1/jobs/{job['id']}/history")
    (worker,) = (w for w in workers(client) if w["id"] == job["worker_id"])
    marks = {
        "activated": first_mark(history, "activated"),
        # the worker runs from its pilot's first call, in the allocation on the first node
        "pilot's first call": epoch(worker["started_at"]) if worker["started_at"] else None,
        "sent to the pilot": first_mark(history, "sent"),
        "all ranks running": max(starts),
    }
    return {step: at - submitted for step, at in marks.items() if at is not None}


def workers(client: HarvesterClient) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.get("/api/v1/workers", limit=100)["items"]
    return items


def wait_for_no_worker(client: HarvesterClient) -> None:
    deadline = time.monotonic() + 120
    while any(w["status"] in ("submitted", "running") for w in workers(client)):
        if time.monotonic() > deadline:
            raise RuntimeError("the last worker did not end in 120 s")
        time.sleep(0.5)


def cancel_pilots() -> None:
    """No pilot of this run outlives it (one left running would hold both nodes)."""
    listed = subprocess.run(
        ["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, check=False
    ).stdout
    ids = [line.split()[0] for line in listed.splitlines() if " hpcaf-ANALY_MN-" in line]
    if ids:
        subprocess.run(["scancel", *ids], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    conf = os.environ.get("SLURM_CONF")
    if not conf or not Path(conf).is_file():
        sys.exit("export SLURM_CONF (scripts/slurm-cluster up prints it)")
    os.environ["HPCAF_PILOT_MAX_IDLE_S"] = "2"
    runs = []
    config = QUEUE.format(conf=json.dumps(conf))
    with harvester(new_home("hpcaf-multinode-"), config) as env:
        client = HarvesterClient(env["HPCAF_URL"], env["HPCAF_TOKEN"])
        with client:
            try:
                for _ in range(args.repeat):
                    runs.append(one_job(client))
                    wait_for_no_worker(client)
            finally:
                cancel_pilots()
    print(f"a 2-node job (2 ranks per node), seconds after submission, {args.repeat} runs:")
    for step in runs[0]:
        values = [run[step] for run in runs if step in run]
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"    {step:<20} median {statistics.median(values):6.2f}  (runs {shown})")


if __name__ == "__main__":
    main()
