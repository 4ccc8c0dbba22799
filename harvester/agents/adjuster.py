"""Worker adjuster: how many new workers each queue gets this cycle (Harvester's rule)."""

from __future__ import annotations

from dataclasses import dataclass

from db.models import QueueStatus
from harvester.config import QueueConfig


@dataclass(frozen=True)
class QueueLoad:
    """What the adjuster looks at for one queue."""

    activated_jobs: int
    queued_workers: int
    running_workers: int
    activated_cores: int | None = None
    """The cores the activated jobs ask for, all together (None: one per job)."""
    activated_memory_mb: int | None = None
    """The memory they book, all together (``db.queue.job_memory_mb``)."""


def new_workers(queue: QueueConfig, status: QueueStatus, load: QueueLoad) -> int:
    """New workers for ``queue``: zero when offline, else the tightest of the caps.

    Pull mode: each queued worker will take an activated job, so demand is the
    activated jobs not yet covered by queued workers. A queue whose pilots pack
    jobs (``packJobs``, slots of several cores) needs one worker per slot's worth
    of the activated jobs' cores, or of their memory when that fills slots first.
    Caps: ``maxWorkers`` over queued + running, ``nQueueLimitWorker`` over queued, and
    ``maxNewWorkersPerCycle``.
    """
    if status is QueueStatus.OFFLINE:
        return 0
    wanted = load.activated_jobs
    if queue.pack_jobs and queue.cores > 1 and load.activated_cores is not None:
        slots = -(-load.activated_cores // queue.cores)
        if load.activated_memory_mb is not None:  # jobs may fill a slot's memory first
            slots = max(slots, -(-load.activated_memory_mb // queue.memory_mb))
        wanted = min(wanted, slots)
    demand = wanted - load.queued_workers
    room = queue.max_workers - (load.queued_workers + load.running_workers)
    queue_room = queue.queue_limit - load.queued_workers
    return max(0, min(demand, room, queue_room, queue.max_new_workers_per_cycle))


def new_workers_by_nodes(
    queue: QueueConfig,
    status: QueueStatus,
    loads: dict[int, QueueLoad],
    *,
    queued: int,
    running: int,
) -> dict[int, int]:
    """New workers per allocation size (nodes): each size's demand by :func:`new_workers`,
    the queue's caps applied to all of its workers together (``queued`` and ``running``:
    of every size, those of sizes no activated job needs included), one-node first."""
    room = min(
        queue.max_workers - (queued + running),
        queue.queue_limit - queued,
        queue.max_new_workers_per_cycle,
    )
    plan: dict[int, int] = {}
    for nodes in sorted(loads):
        n_new = max(0, min(new_workers(queue, status, loads[nodes]), room))
        if n_new:
            plan[nodes] = n_new
            room -= n_new
    return plan
