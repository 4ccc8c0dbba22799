"""Monitor: follows workers in their batch systems and fails the jobs of workers that ended.

A worker that ends (or vanishes) while its pilot still holds jobs takes those
jobs down with it: they fail with ``worker_vanished`` and are retried when
attempts remain, without waiting for the heartbeat timeout.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.leases import GLOBAL, queue_lease
from db.models import Job, Task, Worker, utcnow
from db.queue import for_change, transition
from db.states import JOB_ACTIVE, WORKER_ACTIVE, WORKER_TERMINAL
from harvester import telemetry
from harvester.agents.base import Agent
from harvester.context import HarvesterContext
from harvester.errors import HarvesterError
from harvester.providers.base import Provider
from harvester.services.lifecycle import fail_job
from protocol.error_codes import PilotErrorCode
from protocol.states import WorkerStatus

log = logging.getLogger(__name__)

ORPHAN_GRACE_S = 600.0


def fail_held_jobs(session: Session, worker: Worker, why: str) -> int:
    """Fail (and retry) every job the worker's pilot still holds."""
    jobs = session.scalars(
        for_change(
            select(Job)
            .where(Job.worker_id == worker.id, Job.status.in_(list(JOB_ACTIVE)))
            .order_by(Job.id)
        )
    ).all()
    for job in jobs:
        task = session.get(Task, job.task_id)
        assert task is not None
        fail_job(
            session,
            job,
            task,
            error_code=PilotErrorCode.WORKER_VANISHED,
            diagnostics=f"worker {worker.id} (batch id {worker.batch_id}) {why}",
            actor="monitor",
        )
    return len(jobs)


class Monitor(Agent):
    name = "monitor"
    lease = None  # per queue (and the global lease for orphans), in run_once

    def __init__(self, ctx: HarvesterContext, providers: dict[str, Provider]) -> None:
        super().__init__(ctx)
        self.providers = providers

    def run_once(self) -> None:
        if self.ctx.leases.holds(GLOBAL):
            self._orphans()
        for queue_name, provider in self.providers.items():
            if self.ctx.leases.holds(queue_lease(queue_name)):
                self._check_queue(queue_name, provider)

    def _orphans(self) -> None:
        """Workers recorded but never given a batch id (the harvester died while
        submitting them) are ``missed`` after a grace period."""
        cutoff = utcnow() - timedelta(seconds=ORPHAN_GRACE_S)
        with self.ctx.sessions.begin() as session:
            orphans = session.scalars(
                select(Worker).where(
                    Worker.status == WorkerStatus.SUBMITTED,
                    Worker.batch_id.is_(None),
                    Worker.submitted_at < cutoff,
                )
            ).all()
            for worker in orphans:
                transition(
                    session,
                    worker,
                    WorkerStatus.MISSED,
                    reason="never reached the batch system (no batch id)",
                )

    def _check_queue(self, queue_name: str, provider: Provider) -> None:
        with self.ctx.sessions() as session:
            workers = session.scalars(
                select(Worker).where(
                    Worker.queue == queue_name,
                    Worker.status.in_(list(WORKER_ACTIVE)),
                    Worker.batch_id.is_not(None),
                )
            ).all()
        if not workers:
            return
        for w in workers:
            if w.workdir and w.batch_id:
                provider.track(w.batch_id, Path(w.workdir))
        try:
            statuses = provider.status([w.batch_id for w in workers if w.batch_id])
        except HarvesterError as exc:
            telemetry.record_failure(workers[0].provider, queue_name, "status")
            log.error("queue %s: status query failed: %s", queue_name, exc)
            return
        timeout = timedelta(seconds=self.ctx.settings.worker_queue_timeout_s)
        now = utcnow()
        for snapshot in workers:
            batch = statuses.get(snapshot.batch_id or "")
            with self.ctx.sessions.begin() as session:
                worker = session.get(Worker, snapshot.id)
                if worker is None or worker.status in WORKER_TERMINAL:
                    continue
                if batch is None or batch.status is None:
                    continue
                if batch.status is WorkerStatus.RUNNING and worker.status is WorkerStatus.SUBMITTED:
                    worker.started_at = now
                    transition(
                        session, worker, WorkerStatus.RUNNING, reason=f"batch: {batch.native}"
                    )
                elif batch.status is WorkerStatus.SUBMITTED and (
                    now - worker.submitted_at > timeout
                ):
                    provider.cancel([worker.batch_id or ""])
                    worker.diagnostics = f"queued longer than {timeout}"
                    transition(
                        session,
                        worker,
                        WorkerStatus.CANCELLED,
                        reason=f"queued longer than {timeout}",
                    )
                elif batch.status in WORKER_TERMINAL:
                    worker.exit_code = batch.exit_code
                    worker.diagnostics = batch.message or worker.diagnostics
                    transition(
                        session,
                        worker,
                        batch.status,
                        reason=batch.message or f"batch: {batch.native}",
                    )
                    n = fail_held_jobs(session, worker, f"ended {batch.status.value}")
                    if n:
                        log.warning(
                            "worker %d ended %s holding %d jobs; they were failed",
                            worker.id,
                            batch.status.value,
                            n,
                        )
