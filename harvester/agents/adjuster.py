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


def new_workers(queue: QueueConfig, status: QueueStatus, load: QueueLoad) -> int:
    """New workers for ``queue``: zero when offline, else the tightest of the caps.

    Pull mode: each queued worker will take an activated job, so demand is the
    activated jobs not yet covered by queued workers. Caps: ``maxWorkers``
    over queued + running, ``nQueueLimitWorker`` over queued, and
    ``maxNewWorkersPerCycle``.
    """
    if status is QueueStatus.OFFLINE:
        return 0
    demand = load.activated_jobs - load.queued_workers
    room = queue.max_workers - (load.queued_workers + load.running_workers)
    queue_room = queue.queue_limit - load.queued_workers
    return max(0, min(demand, room, queue_room, queue.max_new_workers_per_cycle))
