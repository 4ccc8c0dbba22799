"""Filtered, sorted and paged lists of tasks, jobs and workers (the monitor's queries).

Each list is one SELECT with its filters, one COUNT of the same filters, and a
LIMIT/OFFSET page; the indexes in migration 0004 match the filters, so a page
of a 100,000-job database answers in milliseconds (``bench/queries.py``).
Sorting and name patterns are SQL, so they live here with the queries, not
with the HTTP parameters that carry them (the services import no web code).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from db.models import Job, Task, Worker
from harvester.errors import InvalidRequest
from protocol.states import JobStatus, TaskStatus, WorkerStatus

TASK_SORTS = {
    "id": Task.id,
    "created_at": Task.created_at,
    "modified_at": Task.modified_at,
    "status": Task.status,
    "name": Task.name,
    "owner": Task.owner,
}
JOB_SORTS = {
    "id": Job.id,
    "created_at": Job.created_at,
    "ended_at": Job.ended_at,
    "status": Job.status,
    "queue": Job.queue,
    "task": Job.task_id,
}
WORKER_SORTS = {
    "id": Worker.id,
    "submitted_at": Worker.submitted_at,
    "ended_at": Worker.ended_at,
    "status": Worker.status,
    "queue": Worker.queue,
}


@dataclass
class TimeRange:
    after: datetime | None = None
    before: datetime | None = None


@dataclass
class TaskFilter:
    owner: str | None = None
    status: list[TaskStatus] = field(default_factory=list)
    kind: str | None = None
    name: str | None = None
    created: TimeRange = field(default_factory=TimeRange)


@dataclass
class JobFilter:
    task: int | None = None
    owner: str | None = None
    status: list[JobStatus] = field(default_factory=list)
    queue: str | None = None
    error_code: int | None = None
    created: TimeRange = field(default_factory=TimeRange)
    ended: TimeRange = field(default_factory=TimeRange)


@dataclass
class WorkerFilter:
    queue: str | None = None
    status: list[WorkerStatus] = field(default_factory=list)
    batch_id: str | None = None
    node: str | None = None
    submitted: TimeRange = field(default_factory=TimeRange)


def _in_range(query: Select[Any], column: Any, span: TimeRange) -> Select[Any]:
    if span.after is not None:
        query = query.where(column >= span.after)
    if span.before is not None:
        query = query.where(column < span.before)
    return query


def task_query(f: TaskFilter) -> Select[Any]:
    query = select(Task)
    if f.owner is not None:
        query = query.where(Task.owner == f.owner)
    if f.status:
        query = query.where(Task.status.in_(f.status))
    if f.kind is not None:
        query = query.where(Task.kind == f.kind)
    if f.name is not None:
        query = query.where(Task.name.like(like_pattern(f.name), escape="\\"))
    return _in_range(query, Task.created_at, f.created)


def job_query(f: JobFilter) -> Select[Any]:
    query = select(Job)
    if f.task is not None:
        query = query.where(Job.task_id == f.task)
    if f.owner is not None:
        query = query.where(Job.task_id.in_(select(Task.id).where(Task.owner == f.owner)))
    if f.status:
        query = query.where(Job.status.in_(f.status))
    if f.queue is not None:
        query = query.where(Job.queue == f.queue)
    if f.error_code is not None:
        query = query.where(Job.pilot_error_code == f.error_code)
    query = _in_range(query, Job.created_at, f.created)
    return _in_range(query, Job.ended_at, f.ended)


def worker_query(f: WorkerFilter) -> Select[Any]:
    query = select(Worker)
    if f.queue is not None:
        query = query.where(Worker.queue == f.queue)
    if f.status:
        query = query.where(Worker.status.in_(f.status))
    if f.batch_id is not None:
        query = query.where(Worker.batch_id == f.batch_id)
    if f.node is not None:
        query = query.where(Worker.node.like(like_pattern(f.node), escape="\\"))
    return _in_range(query, Worker.submitted_at, f.submitted)


def order_by(query: Select[Any], sort: str, columns: dict[str, ColumnElement[Any]]) -> Select[Any]:
    """``sort=name`` ascending, ``sort=-name`` descending; ties broken by the primary key."""
    descending = sort.startswith("-")
    key = sort.removeprefix("-")
    if key not in columns:
        raise InvalidRequest(
            f"cannot sort by {key!r}; sort by one of {', '.join(sorted(columns))} "
            "(prefix '-' for descending)"
        )
    column = columns[key]
    tiebreak = columns["id"]
    if descending:
        return query.order_by(column.desc(), tiebreak.desc())
    return query.order_by(column.asc(), tiebreak.asc())


def like_pattern(pattern: str) -> str:
    """A shell-style pattern (``*`` and ``?``) as a SQL LIKE pattern with ``\\`` escapes."""
    if len(pattern) > 256:
        raise InvalidRequest("name patterns are at most 256 characters")
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def page(
    session: Session,
    query: Select[Any],
    *,
    sort: str,
    sorts: dict[str, Any],
    limit: int,
    offset: int,
) -> tuple[int, list[Any]]:
    """(total matching rows, the rows of this page)."""
    ordered = order_by(query, sort, sorts)
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    rows = list(session.scalars(ordered.limit(limit).offset(offset)))
    return int(total or 0), rows
