"""One rank of a multi-node job: its container on its node, and its exit code kept.

``srun`` starts this on every node of the allocation, once per rank
(``python -m pilot.rank PLAN``). It reads the job's container plan, written by
the pilot on the first node (``pilot/ranks.py``), adds what only the rank knows
(its number, its node, and the process-management variables through which MPI
and Dask find the other ranks), and runs the container. Its exit code goes to
``<ranks folder>/<rank>.json`` for the pilot's report, and is its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from pilot.runtimes.base import Bind, ContainerRequest
from pilot.runtimes.select import select_runtime

PASSED_THROUGH = ("SLURM_", "PMIX_", "PMI_")
"""Variables a rank's container gets from ``srun``: how it finds its peers (PMIx)."""


def load_plan(path: Path) -> tuple[str, ContainerRequest, Path]:
    """(runtime name, the container of every rank, the folder of the ranks' exit codes)."""
    plan = json.loads(path.read_text())
    raw = plan["request"]
    request = ContainerRequest(
        image=Path(raw["image"]),
        argv=list(raw["argv"]),
        workdir=Path(raw["workdir"]),
        transforms_dir=Path(raw["transforms_dir"]),
        env=dict(raw["env"]),
        binds=[Bind(**bind) for bind in raw["binds"]],
        allow_network=bool(raw["allow_network"]),
        extra_options=list(raw["extra_options"]),
    )
    return str(plan["runtime"]), request, Path(plan["ranks_dir"])


def rank_request(request: ContainerRequest, environ: dict[str, str]) -> ContainerRequest:
    """This rank's container: the job's, with the rank's identity and its PMIx rendezvous."""
    passed = {k: v for k, v in environ.items() if k.startswith(PASSED_THROUGH)}
    identity = {
        "HPCAF_RANK": environ.get("SLURM_PROCID", "0"),
        "HPCAF_RANKS": environ.get("SLURM_NTASKS", "1"),
        "HPCAF_LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "HPCAF_NODE": environ.get("SLURMD_NODENAME", ""),
    }
    binds = list(request.binds)
    server_dir = environ.get("PMIX_SERVER_TMPDIR")
    if server_dir and Path(server_dir).is_dir():  # the PMIx server's files for this step
        binds.append(Bind(server_dir, server_dir, writable=True))
    return replace(request, env={**request.env, **passed, **identity}, binds=binds)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    runtime_name, request, ranks_dir = load_plan(Path(args[0]))
    environ = dict(os.environ)
    mine = rank_request(request, environ)
    command = select_runtime(runtime_name).command(mine)
    try:
        code = subprocess.call(command, stdin=subprocess.DEVNULL)
    except OSError as exc:
        print(f"rank {mine.env['HPCAF_RANK']}: cannot start the container: {exc}", flush=True)
        code = 127
    rank = int(mine.env["HPCAF_RANK"])
    record = {
        "rank": rank,
        "node": mine.env["HPCAF_NODE"],
        "exit_code": code,
        "ended_at": time.time(),
    }
    (ranks_dir / f"{rank}.json").write_text(json.dumps(record))
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
