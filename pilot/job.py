"""Running one job: stage-in, payload, stage-out, final report.

Every way a job can end produces exactly one final ``update_job``: finished
with its outputs, or failed with a pilot error code and diagnostics. The
payload's output is kept as the job log and uploaded in both cases. How the
payload runs is ``pilot/execution.py``'s; how it is watched, and what a kill
or the walltime makes of it, ``pilot/supervision.py``'s.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pilot.execution import (
    ContainerPayload,
    PayloadNotStarted,
    WarmPayload,
    job_dir,
    warm_eligible,
)
from pilot.gpus import Gpu
from pilot.link import HarvesterLink, ServerError
from pilot.outcome import Outcome, payload_failed
from pilot.payload import container_request, owner_cache
from pilot.ranks import RankedPayload, rank_outcome, ranks_metrics
from pilot.report import final_report
from pilot.runtimes.select import RuntimeUnavailable, select_runtime
from pilot.specs import UnreadableJob
from pilot.stage import (
    Carry,
    StageError,
    stage_in,
    stage_out,
    stage_out_partial,
    unpack_sandbox,
)
from pilot.supervision import KILLED_BY_SERVER, Exited, Payload, Supervisor
from pilot.warm import WarmPool
from protocol.error_codes import PilotErrorCode
from protocol.pilot import JobSpec

log = logging.getLogger(__name__)

WARM_RUNNING_REPORT_AFTER_S = 0.5
"""A job on a warm worker is reported ``running`` once it has run this long; one that
ends sooner reports its start with its end (one request instead of two for a short
call). A container of its own takes longer than this to start: reported at once."""


@dataclass
class _PayloadStart:
    """When the job's payload started, and whether its ``running`` report was made."""

    at: datetime | None = None
    reported: bool = False

    def unreported(self) -> datetime | None:
        """The start the final report must carry: the payload ran, unreported."""
        return None if self.reported else self.at


class JobRunner:
    """Runs jobs, several at once on threads of their own (a whole-node pilot); can be
    told to kill one of them, or all."""

    def __init__(
        self,
        server: HarvesterLink,
        pilot_id: str,
        base_dir: Path,
        cores: int,
        gpus: list[Gpu] | None = None,
        warm: bool = True,
        compile_cache: Path | None = None,
    ) -> None:
        self.gpus = list(gpus or [])
        self.compile_cache = compile_cache
        # as many idle warm workers as the slot has cores: one per job it can run at once
        self.warm: WarmPool | None = WarmPool(max_idle=cores) if warm else None
        self.server = server
        self.pilot_id = pilot_id
        self.base_dir = base_dir
        self.cores = cores
        self.supervisor = Supervisor()

    def kill(self, job_id: int | None, code: PilotErrorCode, reason: str) -> None:
        """Stop the payload of ``job_id`` (or whatever runs, when ``None``); called
        from other threads."""
        self.supervisor.kill(job_id, code, reason)

    def run(self, spec: JobSpec, gpus: list[Gpu] | None = None) -> Outcome:
        """Run one job to its final report; ``gpus``: the node's GPUs this job was given
        (default: all of them), the only ones its container sees."""
        given = self.gpus if gpus is None else list(gpus)
        workdir = job_dir(self.base_dir, self.warm, spec)
        workdir.mkdir(parents=True, exist_ok=True)
        start, carry = _PayloadStart(), Carry()  # one report's budget of carried files
        with self.supervisor.job(spec.job_id):
            try:
                outcome = self._run(spec, workdir, given, start, carry)
            except (StageError, RuntimeUnavailable, PayloadNotStarted) as exc:
                outcome = Outcome("failed", error_code=exc.code, diagnostics=str(exc))
            except Exception as exc:  # report anything else rather than lose the job
                log.exception("job %s: unexpected pilot error", spec.job_id)
                outcome = Outcome(
                    "failed",
                    error_code=PilotErrorCode.UNKNOWN,
                    diagnostics=f"{type(exc).__name__}: {exc}",
                )
        self._report(
            spec.job_id,
            workdir,
            outcome,
            given if spec.gpus > 0 else None,
            started_at=start.unreported(),
            carry=carry,
        )
        shutil.rmtree(workdir, ignore_errors=True)
        return outcome

    def refuse(self, job: UnreadableJob) -> Outcome | None:
        """Fail, without running anything, a job whose spec this pilot cannot read.

        ``UNKNOWN``, as for any failure the pilot did not anticipate; nothing
        can be reported for a job without a readable id.
        """
        if job.job_id is None:
            log.error("the server sent a job without a readable id; not run: %s", job.problem)
            return None
        log.error("job %s: its spec cannot be read; not run: %s", job.job_id, job.problem)
        outcome = Outcome(
            "failed",
            error_code=PilotErrorCode.UNKNOWN,
            diagnostics=f"the pilot cannot read the job's specification: {job.problem}",
        )
        self._report(job.job_id, None, outcome, None)
        return outcome

    def close(self) -> None:
        """Stop the warm workers (the pilot is ending)."""
        if self.warm:
            self.warm.close()

    def _run(
        self, spec: JobSpec, workdir: Path, gpus: list[Gpu], start: _PayloadStart, carry: Carry
    ) -> Outcome:
        if not warm_eligible(self.warm, spec):  # a warm worker has no container to start:
            self._update(spec.job_id, {"state": "starting"})  # its job goes to running
        image = spec.image_path
        if not image or not Path(image).is_dir():
            return Outcome(
                "failed",
                error_code=PilotErrorCode.IMAGE_NOT_FOUND,
                diagnostics=f"image {spec.image} not found at {image}",
            )
        if spec.sandbox is not None:
            unpack_sandbox(self.server, spec.sandbox, workdir)
        stage_in(self.server, spec.inputs, workdir, cache=self.base_dir / "inputs")
        if spec.transform != "runcontainer":
            (workdir / "job.json").write_text(json.dumps(spec.model_dump(mode="json")))
        runtime = select_runtime(spec.container.runtime)
        request = container_request(
            spec,
            Path(image),
            workdir,
            gpus,
            owner_cache(self.base_dir, spec.owner),
            self.compile_cache,
        )
        header = (
            f"=== hpcaf pilot {self.pilot_id}: job {spec.job_id} attempt {spec.attempt_nr} "
            f"with {runtime.name}\n"
        )
        payload: Payload
        report_after_s = 0.0
        if self.warm is not None and warm_eligible(self.warm, spec):
            payload = WarmPayload.start(self.warm, spec, request, runtime, header, self.base_dir)
            report_after_s = WARM_RUNNING_REPORT_AFTER_S
        elif spec.nodes > 1:
            payload = RankedPayload.start_ranks(spec, request, runtime, header)
        else:
            payload = ContainerPayload.start(spec.job_id, request, runtime, header)
        start.at = datetime.now(UTC)

        def report_running() -> None:
            start.reported = True
            self._update(spec.job_id, {"state": "running"})

        try:
            ended = self.supervisor.supervise(
                payload, float(spec.walltime_s), report_running, report_after_s=report_after_s
            )
        finally:
            if isinstance(payload, WarmPayload | RankedPayload):
                payload.finish()
        if isinstance(payload, RankedPayload):
            return self._ranks_ended(spec, payload, ended, workdir, carry)
        if isinstance(ended, Outcome):
            return ended
        if ended.code != 0:
            partial = stage_out_partial(self.server, spec.outputs, workdir, carry)
            return payload_failed(ended.code, ended.elapsed_s, workdir, partial)
        outputs = stage_out(self.server, list(spec.outputs), workdir, carry)
        return Outcome("finished", exit_code=0, outputs=outputs)

    def _ranks_ended(
        self,
        spec: JobSpec,
        payload: RankedPayload,
        ended: Outcome | Exited,
        workdir: Path,
        carry: Carry,
    ) -> Outcome:
        """A multi-node job's end, with every rank's exit code in its metrics: failed with
        ``RANK_FAILED`` when one rank failed (the others were stopped)."""
        ends = payload.rank_ends()
        if isinstance(ended, Outcome):
            outcome = ended
        else:
            failure = rank_outcome(ended.code, ended.elapsed_s, ends)
            if failure is not None:
                failure.outputs = stage_out_partial(self.server, spec.outputs, workdir, carry)
                outcome = failure
            else:
                outputs = stage_out(self.server, list(spec.outputs), workdir, carry)
                outcome = Outcome("finished", exit_code=0, outputs=outputs)
        outcome.metrics = ranks_metrics(ends)
        return outcome

    def _report(
        self,
        job_id: int,
        workdir: Path | None,
        outcome: Outcome,
        gpus: list[Gpu] | None,
        *,
        started_at: datetime | None = None,
        carry: Carry | None = None,
    ) -> None:
        body = final_report(self.server, job_id, outcome, workdir, gpus, carry)
        if started_at is not None:
            body["started_at"] = started_at.isoformat()
        try:
            reply = self._update(job_id, body)
            log.info("job %s: reported %s (server: %s)", job_id, outcome.state, reply.get("status"))
        except ServerError as exc:
            log.error("job %s: final update refused: %s", job_id, exc)

    def _update(self, job_id: int, body: dict[str, Any]) -> dict[str, Any]:
        reply = self.server.update_job({"job_id": job_id, "pilot_id": self.pilot_id, **body})
        if reply.get("command") == "tobekilled":
            self.kill(job_id, PilotErrorCode.KILLED, KILLED_BY_SERVER)
        return reply
