"""Queues in the database: synced from the settings file, status changed by admins."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Job, Queue, QueueStatus, Worker
from harvester.config import QueueConfig
from harvester.errors import NotFoundError
from protocol.states import JobStatus, WorkerStatus


def sync_queues(session: Session, configs: list[QueueConfig]) -> None:
    """Write the configured queues; a status an admin set survives restarts."""
    for config in configs:
        row = session.get(Queue, config.name)
        document = config.model_dump(mode="json", by_alias=True)
        if row is None:
            session.add(
                Queue(
                    name=config.name,
                    provider=config.provider,
                    status=config.status,
                    config=document,
                )
            )
            continue
        row.provider = config.provider
        row.config = document
        if not row.status_set_by_admin:
            row.status = config.status


def queue_status(session: Session, name: str) -> QueueStatus:
    row = session.get(Queue, name)
    if row is None:
        raise NotFoundError(f"unknown queue {name!r}")
    return row.status


def set_queue_status(session: Session, name: str, status: QueueStatus) -> Queue:
    row = session.get(Queue, name)
    if row is None:
        raise NotFoundError(f"unknown queue {name!r}")
    row.status = status
    row.status_set_by_admin = True
    return row


def list_queues(session: Session) -> list[Queue]:
    return list(session.scalars(select(Queue).order_by(Queue.name)))


def worker_counts(session: Session) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for queue, status, n in session.execute(
        select(Worker.queue, Worker.status, func.count()).group_by(Worker.queue, Worker.status)
    ):
        counts.setdefault(queue, {})[WorkerStatus(status).value] = n
    return counts


def activated_counts(session: Session) -> dict[str, int]:
    return {
        str(queue): n
        for queue, n in session.execute(
            select(Job.queue, func.count())
            .where(Job.status == JobStatus.ACTIVATED, Job.queue.is_not(None))
            .group_by(Job.queue)
        )
    }
