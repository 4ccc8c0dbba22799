"""Brokerage: send each defined job to a queue whose slots fit it.

A queue fits when it is online (or in test and named by the task's site),
not excluded, offers enough cores, memory and walltime, and has a GPU exactly
when the job asks for one. Among the fitting queues the least loaded one
(activated jobs per allowed worker) wins; queues the harvester starts no
workers for (``maxWorkers = 0``) win only when nothing else fits. A job no
queue fits is activated without a queue and keeps a visible reason; it is
brokered again every cycle. A job whose registry image is not pulled yet stays
``defined`` and says so (the image puller's message).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sqlalchemy import or_, select

from db.models import Job, QueueStatus, Task
from db.queue import transition
from harvester.agents.base import Agent
from harvester.architecture import GpuRequest
from harvester.config import QueueConfig
from harvester.images.reference import is_registry_reference
from harvester.services.queues import activated_counts, list_queues
from protocol.states import JobStatus


@dataclass(frozen=True)
class JobNeeds:
    """What brokerage compares against queues."""

    cores: int
    memory_mb: int
    walltime_s: int
    gpu: GpuRequest | None
    sites: frozenset[str]
    """The queues the task names (``--site A,B``); empty: any."""
    excluded: frozenset[str]
    nodes: int = 1
    """Nodes of one allocation (a gang-scheduled job when above 1)."""


def rejection(queue: QueueConfig, status: QueueStatus, needs: JobNeeds) -> str | None:
    """Why ``queue`` cannot take the job, or ``None`` when it can."""
    if needs.sites and queue.name not in needs.sites:
        return "not a requested site"
    if queue.name in needs.excluded:
        return "excluded"
    if status is QueueStatus.OFFLINE:
        return "offline"
    if status is QueueStatus.TEST and queue.name not in needs.sites:
        return "in test (only for tasks that name it)"
    if needs.nodes > queue.max_nodes:
        return f"at most {queue.max_nodes} nodes per allocation < {needs.nodes}"
    if needs.cores > queue.cores:
        return f"{queue.cores} cores per slot < {needs.cores}"
    if needs.memory_mb and needs.memory_mb > queue.memory_mb:
        return f"{queue.memory_mb} MiB per slot < {needs.memory_mb}"
    if needs.walltime_s and needs.walltime_s > queue.walltime_s:
        return f"max walltime {queue.walltime_s}s < {needs.walltime_s}s"
    if needs.gpu is not None:
        return gpu_rejection(queue, needs.gpu)
    if queue.gpus > 0 and not queue.allow_cpu_jobs:
        return "GPU queue (CPU jobs not allowed)"
    return None


def _version(text: str | None) -> tuple[int, ...] | None:
    return tuple(int(p) for p in text.split(".")) if text else None


def gpu_rejection(queue: QueueConfig, want: GpuRequest) -> str | None:
    """PanDA's GPU rule: vendor, model and microarchitecture on any node of the queue;
    VRAM, CUDA and driver minimums met by every node."""
    if queue.gpus < 1:
        return "no GPU"
    nodes = [n for n in queue.gpu_nodes if n.vendor == want.vendor]
    if not queue.gpu_nodes:
        detailed = (
            want.model,
            want.min_cuda,
            want.min_vram_mb,
            want.microarchitecture,
            want.min_driver,
        )
        if any(d is not None for d in detailed):
            return "declares no GPU details to check the request against"
        return None if want.vendor == "nvidia" else f"no {want.vendor} GPU declared"
    if not nodes:
        return f"no {want.vendor} GPU"
    if want.model is not None and not any(want.model_ok(n.model) for n in nodes):
        return f"no GPU model {'not ' if want.model_negated else ''}matching {want.model!r}"
    if want.microarchitecture and not any(
        (n.microarchitecture or "").lower() == want.microarchitecture.lower() for n in nodes
    ):
        return f"no {want.microarchitecture} GPU"
    if want.min_vram_mb and any(n.vram_mb < want.min_vram_mb for n in nodes):
        return f"not every node has {want.min_vram_mb} MiB of VRAM"
    if want.min_cuda and any((_version(n.cuda) or ()) < want.min_cuda for n in nodes):
        return f"not every node has CUDA >= {'.'.join(map(str, want.min_cuda))}"
    if want.min_driver and any((_version(n.driver) or ()) < want.min_driver for n in nodes):
        return f"not every node has driver >= {'.'.join(map(str, want.min_driver))}"
    return None


def choose_queue(
    queues: list[tuple[QueueConfig, QueueStatus]], needs: JobNeeds, load: dict[str, int]
) -> tuple[str | None, str]:
    """The best queue and a message; ``None`` and the reasons when nothing fits."""
    fitting = []
    reasons = []
    for queue, status in queues:
        why = rejection(queue, status, needs)
        if why is None:
            fitting.append(queue)
        else:
            reasons.append(f"{queue.name}: {why}")
    if not fitting:
        return None, "no queue can run this job (" + "; ".join(reasons or ["no queues"]) + ")"
    # queues whose workers the harvester does not start (maxWorkers = 0: pilots come from
    # elsewhere) are chosen only when no provisioned queue fits
    best = min(
        fitting,
        key=lambda q: (q.max_workers == 0, load.get(q.name, 0) / max(q.max_workers, 1), q.name),
    )
    return best.name, f"brokered to {best.name}"


class Brokerage(Agent):
    name = "brokerage"
    batch = 2000

    def run_once(self) -> None:
        brokered: Counter[str] = Counter()
        self._broker(brokered)
        for name, activated in brokered.items():  # committed: polls of these queues look again
            self.ctx.idle_queues.forget_queue(name)
            self.ctx.activations.notify(name, activated)  # and a long-polling pilot per job

    def _broker(self, brokered: Counter[str]) -> None:
        with self.ctx.sessions.begin() as session:
            jobs = session.scalars(
                select(Job)
                .where(
                    or_(
                        Job.status == JobStatus.DEFINED,
                        (Job.status == JobStatus.ACTIVATED) & Job.queue.is_(None),
                    )
                )
                .order_by(Job.priority.desc(), Job.id)
                .limit(self.batch)
            ).all()
            if not jobs:
                return
            rows = {q.name: q.status for q in list_queues(session)}
            queues = [(q, rows.get(q.name, q.status)) for q in self.ctx.queues.values()]
            load = activated_counts(session)
            tasks = {
                t.id: t
                for t in session.scalars(select(Task).where(Task.id.in_({j.task_id for j in jobs})))
            }
            gpus = {
                t.id: GpuRequest.from_document(t.gpu_request)
                for t in tasks.values()
                if t.gpu_request is not None
            }
            for job in jobs:
                task = tasks[job.task_id]
                if is_registry_reference(task.image) and task.image_digest is None:
                    # not brokered before the image is on the site: no pilot is started
                    # for a job that could not run, and the job says what it waits for
                    job.brokerage_message = task.image_message or (
                        f"waiting for image {task.image} to be pulled"
                    )
                    continue
                needs = JobNeeds(
                    nodes=job.nodes,
                    cores=job.cores,
                    memory_mb=job.memory_mb,
                    walltime_s=job.walltime_s,
                    gpu=gpus.get(task.id),
                    sites=frozenset(task.sites),
                    excluded=frozenset(task.excluded_sites),
                )
                name, message = choose_queue(queues, needs, load)
                job.queue = name
                job.brokerage_message = message
                if name is not None:
                    load[name] = load.get(name, 0) + 1
                    brokered[name] += 1
                if job.status is JobStatus.DEFINED:
                    transition(session, job, JobStatus.ACTIVATED, reason=message)
