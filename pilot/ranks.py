"""A multi-node job's payload: one container per rank on every node, through ``srun``.

The pilot runs on the first node of its allocation (a Slurm job of ``nodes``
nodes). For a job of ``nodes`` nodes and ``cores`` cores per node it starts
one job step, ``srun --nodes N --ntasks-per-node C``, as sites launch MPI:
Slurm starts ``python -m pilot.rank`` for each rank on its node, and each
starts that rank's container (``pilot/rank.py``). ``--mpi=pmix`` gives the
ranks Slurm's PMIx server, through which OpenMPI's ranks (and ``dask-mpi``)
find each other; ``--kill-on-bad-exit`` ends every rank as soon as one
fails, so no rank is left running after a failure. The pilot then reads every
rank's exit code and reports the job once: finished when all exited 0, else
failed with ``RANK_FAILED`` and the ranks that failed named.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pilot.execution import ContainerPayload, PayloadNotStarted, start_logged
from pilot.outcome import Outcome
from pilot.runtimes.base import ContainerRequest, ContainerRuntime
from protocol.error_codes import PilotErrorCode
from protocol.pilot import JobSpec

log = logging.getLogger(__name__)

RANKS_FOLDER = ".hpcaf-ranks"
"""In the job's work dir (on the shared filesystem): the plan and each rank's exit code."""
STEP_COMMAND_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RankEnd:
    """How one rank ended: its exit code (negative: the signal that killed it), or
    ``None`` when it was stopped before it could say; and when, by the node's clock."""

    rank: int
    node: str | None
    exit_code: int | None
    ended_at: float | None = None

    @property
    def stopped(self) -> bool:
        """Ended by what ``srun`` and ``scancel`` send to stop a step, not by itself."""
        return self.exit_code is None or -self.exit_code in STOP_SIGNALS

    def describe(self) -> str:
        where = f" on {self.node}" if self.node else ""
        if self.exit_code is not None and self.exit_code < 0:
            return f"rank {self.rank}{where} was killed by signal {-self.exit_code}"
        return f"rank {self.rank}{where} exited with code {self.exit_code}"


STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGHUP})


class RankedPayload(ContainerPayload):
    """The job step of all ranks, as the supervisor sees a payload: waited for and stopped
    as a container of its own is (``srun`` passes a stop on to every rank)."""

    died = "the job step gave no exit code"

    def __init__(self, process: subprocess.Popen[bytes], spec: JobSpec, ranks_dir: Path) -> None:
        super().__init__(process)
        self.spec = spec
        self.ranks_dir = ranks_dir

    @classmethod
    def start_ranks(
        cls, spec: JobSpec, request: ContainerRequest, runtime: ContainerRuntime, header: str
    ) -> RankedPayload:
        srun = shutil.which("srun")
        if srun is None or not os.environ.get("SLURM_JOB_ID"):
            raise PayloadNotStarted(
                PilotErrorCode.CONTAINER_FAILED,
                f"a job of {spec.nodes} nodes needs a Slurm allocation (srun and SLURM_JOB_ID)",
            )
        ranks_dir = request.workdir / RANKS_FOLDER
        ranks_dir.mkdir(exist_ok=True)
        plan = ranks_dir / "plan.json"
        plan.write_text(
            json.dumps(
                {
                    "runtime": runtime.name,
                    "ranks_dir": str(ranks_dir),
                    "request": request_document(request),
                }
            )
        )
        command = [
            srun,
            f"--nodes={spec.nodes}",
            f"--ntasks-per-node={spec.cores}",
            "--cpus-per-task=1",
            "--kill-on-bad-exit=1",
            "--mpi=pmix",
            "--label",
            f"--job-name={step_name(spec.job_id)}",
            sys.executable,
            "-m",
            "pilot.rank",
            str(plan),
        ]
        layout = (
            f"=== {spec.nodes} nodes x {spec.cores} ranks, one {runtime.name} container per rank\n"
        )
        process = start_logged(spec.job_id, command, request.workdir, header + layout, "srun")
        return cls(process, spec, ranks_dir)

    def finish(self) -> None:
        """The step is over, however it ended: cancel what may be left of it (srun killed
        before its ranks), so no rank outlives the job."""
        job_id = os.environ.get("SLURM_JOB_ID")
        if not job_id:
            return
        try:
            steps = subprocess.run(
                ["squeue", "-h", "-s", "-j", job_id, "-o", "%i %j"],
                capture_output=True,
                text=True,
                timeout=STEP_COMMAND_TIMEOUT_S,
                check=False,
            ).stdout.split("\n")
            for line in steps:
                step, _, name = line.strip().partition(" ")
                if name == step_name(self.spec.job_id):
                    subprocess.run(
                        ["scancel", "--signal=KILL", step],
                        capture_output=True,
                        timeout=STEP_COMMAND_TIMEOUT_S,
                        check=False,
                    )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("job %s: cannot check the job step's end: %s", self.spec.job_id, exc)

    def rank_ends(self) -> list[RankEnd]:
        """Every rank, in order, as it ended."""
        ends = []
        for rank in range(self.spec.nodes * self.spec.cores):
            path = self.ranks_dir / f"{rank}.json"
            try:
                record = json.loads(path.read_text())
                ended_at = record.get("ended_at")
                ends.append(
                    RankEnd(
                        rank,
                        record.get("node"),
                        int(record["exit_code"]),
                        float(ended_at) if ended_at is not None else None,
                    )
                )
            except (OSError, ValueError, KeyError, TypeError):
                ends.append(RankEnd(rank, None, None))
        return ends


def step_name(job_id: int) -> str:
    return f"hpcaf-job-{job_id}"


def rank_outcome(code: int, elapsed_s: float, ends: list[RankEnd]) -> Outcome | None:
    """``None`` when every rank exited 0; else the job's failure, naming first the rank
    that failed on its own earliest. Once one rank fails, ``--kill-on-bad-exit`` stops the
    others, and a stopped rank may have a lower number or record its end sooner: those
    are listed as stopped, not as the cause. When every end was a stop (the step was
    cancelled, or a rank was OOM-killed), the earliest stop is named."""
    if code == 0 and all(e.exit_code == 0 for e in ends):
        return None
    ended = [e for e in ends if e.exit_code not in (0, None)]
    on_their_own = [e for e in ended if not e.stopped]
    failed = on_their_own or ended
    failed = sorted(failed, key=lambda e: (e.ended_at is None, e.ended_at or 0.0, e.rank))
    stopped = [e for e in ends if e.stopped and e not in failed]
    if failed:
        diagnostics = failed[0].describe()
        if len(failed) > 1:
            diagnostics += f" (and {_ranks_named([e.rank for e in failed[1:]])})"
    else:
        diagnostics = f"the job step exited with code {code}"
    if stopped:
        were = "was" if len(stopped) == 1 else "were"
        diagnostics += f"; {_ranks_named([e.rank for e in stopped])} {were} stopped"
    return Outcome(
        "failed",
        exit_code=failed[0].exit_code if failed else code,
        error_code=PilotErrorCode.RANK_FAILED,
        diagnostics=f"{diagnostics} after {elapsed_s:.1f}s",
    )


def _ranks_named(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {_ranges(ranks)}"


MAX_RANKS_IN_METRICS = 1024
"""Ranks listed one by one in a job's metrics; a larger job lists those that did not exit
0 (the first ``MAX_RANKS_IN_METRICS``) and counts the rest, so a report stays small."""


def ranks_metrics(ends: list[RankEnd]) -> dict[str, Any]:
    """Every rank's node and exit code, for the job's metrics."""
    if len(ends) <= MAX_RANKS_IN_METRICS:
        return {"ranks": [asdict(e) for e in ends]}
    not_ok = [e for e in ends if e.exit_code != 0]
    return {
        "ranks": [asdict(e) for e in not_ok[:MAX_RANKS_IN_METRICS]],
        "ranks_total": len(ends),
        "ranks_exited_0": len(ends) - len(not_ok),
    }


def _ranges(ranks: list[int]) -> str:
    """``0-3, 7, 9-12``: rank numbers as ranges, so that a diagnostic naming thousands of
    ranks stays within what a report may carry."""
    runs: list[list[int]] = []
    for rank in sorted(ranks):
        if runs and rank == runs[-1][1] + 1:
            runs[-1][1] = rank
        else:
            runs.append([rank, rank])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)
    return text if len(text) <= 2000 else f"{text[:2000]}… ({len(ranks)} in all)"


def request_document(request: ContainerRequest) -> dict[str, Any]:
    document = asdict(request)
    for key in ("image", "workdir", "transforms_dir"):
        document[key] = str(document[key])
    return document
