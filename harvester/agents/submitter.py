"""Submitter: starts the workers the adjuster asks for, through each queue's provider.

A refused submission marks the worker failed with the batch system's own
message, and the queue backs off (doubling, capped) before the next try.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from db.leases import queue_lease
from db.models import Job, QueueStatus, Worker
from db.queue import job_memory_mb, record_creation, transition
from harvester import telemetry
from harvester.agents.adjuster import QueueLoad, new_workers_by_nodes
from harvester.agents.base import Agent
from harvester.config import QueueConfig
from harvester.context import HarvesterContext
from harvester.errors import HarvesterError
from harvester.providers.base import Provider, WorkerResources
from harvester.services.queues import queue_status
from protocol.states import JobStatus, WorkerStatus

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 600.0


def pilot_command(ctx: HarvesterContext, queue: QueueConfig, worker_id: int, nodes: int = 1) -> str:
    """The shell command a slot runs: the pilot, told how to reach the harvester (its URL,
    or the messenger folder on a queue without a network), its queue and worker id."""
    token_file = ctx.settings.home / "pilot.token"
    if queue.messenger_dir is not None:
        reach = ["--messenger-dir", queue.messenger_dir]
    else:
        reach = ["--server", ctx.settings.resolved_public_url]
    args = [
        sys.executable,
        "-m",
        "pilot.main",
        *reach,
        "--queue",
        queue.name,
        "--worker-id",
        str(worker_id),
        "--token-file",
        str(token_file),
        "--walltime",
        str(queue.walltime_s),
        "--max-idle",
        str(ctx.settings.pilot_max_idle_s),
        "--cores",
        str(queue.cores),
        "--memory",
        str(queue.memory_mb),
    ]
    if not queue.pack_jobs:
        args.append("--no-pack")
    if queue.jobs_per_pilot:
        args += ["--max-jobs", str(queue.jobs_per_pilot)]
    if queue.compile_cache:
        args += ["--compile-cache", queue.compile_cache]
    if nodes > 1:
        args += ["--nodes", str(nodes)]
    args += queue.pilot_options
    return shlex.join(args)


class Submitter(Agent):
    name = "submitter"
    lease = None  # per queue, in run_once

    def __init__(self, ctx: HarvesterContext, providers: dict[str, Provider]) -> None:
        super().__init__(ctx)
        self.providers = providers
        self._backoff: dict[str, tuple[float, float]] = {}  # queue → (retry at, delay)

    def stop(self) -> None:
        """The harvester is stopping: each provider lets go of the pilots it started (local
        pilots stop with it; batch pilots stay in their slots)."""
        for provider in {id(p): p for p in self.providers.values()}.values():
            provider.close()

    def run_once(self) -> None:
        for queue in self.ctx.queues.values():
            if not self.ctx.leases.holds(queue_lease(queue.name)):
                continue  # another harvester instance provisions this queue
            retry_at, _ = self._backoff.get(queue.name, (0.0, 0.0))
            if time.monotonic() < retry_at:
                continue
            self._cycle(queue)

    def _cycle(self, queue: QueueConfig) -> None:
        with self.ctx.sessions.begin() as session:
            status = queue_status(session, queue.name)
            if status is QueueStatus.OFFLINE:
                return
            activated = session.execute(
                select(
                    Job.nodes,
                    func.count(),
                    func.coalesce(func.sum(Job.cores), 0),
                    func.coalesce(func.sum(job_memory_mb(queue.memory_per_core)), 0),
                )
                .where(Job.status == JobStatus.ACTIVATED, Job.queue == queue.name)
                .group_by(Job.nodes)
            ).all()
            if not activated:
                return
            counts = {
                (nodes, worker_status): n
                for nodes, worker_status, n in session.execute(
                    select(Worker.nodes, Worker.status, func.count())
                    .where(
                        Worker.queue == queue.name,
                        Worker.status.in_([WorkerStatus.SUBMITTED, WorkerStatus.RUNNING]),
                    )
                    .group_by(Worker.nodes, Worker.status)
                ).all()
            }
            loads = {
                nodes: QueueLoad(
                    activated_jobs=n_jobs,
                    # a multi-node job has an allocation of its own: no packing
                    activated_cores=cores if nodes == 1 else None,
                    activated_memory_mb=memory if nodes == 1 else None,
                    queued_workers=counts.get((nodes, WorkerStatus.SUBMITTED), 0),
                    running_workers=counts.get((nodes, WorkerStatus.RUNNING), 0),
                )
                for nodes, n_jobs, cores, memory in activated
            }
            plan = new_workers_by_nodes(
                queue,
                status,
                loads,
                queued=sum(n for (_, s), n in counts.items() if s is WorkerStatus.SUBMITTED),
                running=sum(n for (_, s), n in counts.items() if s is WorkerStatus.RUNNING),
            )
        for nodes, n_new in sorted(plan.items()):
            for _ in range(n_new):
                if not self._submit_one(queue, nodes):
                    return

    def _submit_one(self, queue: QueueConfig, nodes: int = 1) -> bool:
        provider = self.providers[queue.name]
        with self.ctx.sessions.begin() as session:
            worker = Worker(
                queue=queue.name,
                provider=queue.provider,
                status=WorkerStatus.SUBMITTED,
                nodes=nodes,
            )
            session.add(worker)
            session.flush()
            worker.workdir = str(self.ctx.settings.workers_dir / f"{worker.id:08d}")
            record_creation(session, worker, reason="submitting")
            worker_id = worker.id
            workdir = worker.workdir
        resources = WorkerResources(
            cores=queue.cores,
            memory_mb=queue.memory_mb,
            walltime_s=queue.walltime_s,
            gpus=queue.gpus,
            nodes=nodes,
        )
        try:
            batch_id = provider.submit(
                pilot_command(self.ctx, queue, worker_id, nodes),
                resources,
                f"hpcaf-{queue.name}-{worker_id}",
                Path(workdir),
            )
        except HarvesterError as exc:
            telemetry.record_failure(queue.provider, queue.name, "submit")
            self._fail(worker_id, str(exc), queue)
            return False
        with self.ctx.sessions.begin() as session:
            submitted = session.get(Worker, worker_id)
            assert submitted is not None
            submitted.batch_id = batch_id
        self._backoff.pop(queue.name, None)
        log.info("queue %s: worker %d submitted as batch job %s", queue.name, worker_id, batch_id)
        return True

    def _fail(self, worker_id: int, message: str, queue: QueueConfig) -> None:
        _, delay = self._backoff.get(queue.name, (0.0, 0.0))
        delay = min(MAX_BACKOFF_S, max(self.ctx.settings.submit_retry_backoff_s, delay * 2))
        self._backoff[queue.name] = (time.monotonic() + delay, delay)
        log.error(
            "queue %s: worker %d submission failed (next try in %.0fs): %s",
            queue.name,
            worker_id,
            delay,
            message,
        )
        with self.ctx.sessions.begin() as session:
            failed = session.get(Worker, worker_id)
            assert failed is not None
            failed.diagnostics = message
            transition(session, failed, WorkerStatus.FAILED, reason=f"submission failed: {message}")
