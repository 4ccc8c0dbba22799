"""Queue operations: checked state transitions with history, and the atomic job claim."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, case, insert, select, update
from sqlalchemy.orm import Session

from db.models import EntityKind, Job, StateHistory, Task, Worker, utcnow
from db.states import JOB_TERMINAL, TASK_TERMINAL, WORKER_TERMINAL, check_transition
from protocol.states import JobStatus

Stateful = Task | Job | Worker

ROW_LOCK: dict[str, bool] = {"key_share": True}
"""The ``with_for_update`` of :func:`for_change`, for ``Session.get`` and ``refresh``."""

_SelectT = TypeVar("_SelectT", bound=Select[Any])


def for_change(stmt: _SelectT, *, skip_locked: bool = False) -> _SelectT:
    """Lock the rows a writer reads before changing them, in the order it reads them.

    Without it, on PostgreSQL, the watchdog and a pilot's report could both read a job
    as running, and the second to commit would overwrite what the first did. ``FOR NO
    KEY UPDATE``, so that inserting rows that refer to them (files) does not wait.
    SQLite's writers take turns, and it renders nothing. Order several by id.
    """
    return stmt.with_for_update(key_share=True, skip_locked=skip_locked)


_ENTITY = {Task: EntityKind.TASK, Job: EntityKind.JOB, Worker: EntityKind.WORKER}


def transition(
    session: Session,
    obj: Stateful,
    new: enum.StrEnum,
    *,
    reason: str | None = None,
    actor: str | None = None,
    now: datetime | None = None,
) -> None:
    """Move ``obj`` to ``new`` if the rules allow it, and append the history row.

    The status change and its history row are flushed in the caller's
    transaction, so they commit (or roll back) together.
    """
    current = obj.status
    check_transition(current, new)
    now = now or utcnow()
    obj.status = new  # type: ignore[assignment]  # kind checked by check_transition
    if isinstance(obj, Task):
        if new in TASK_TERMINAL:
            obj.ended_at = now
        else:
            obj.ended_at = None
    elif isinstance(obj, Job):
        if new in JOB_TERMINAL:
            obj.ended_at = now
    elif isinstance(obj, Worker) and new in WORKER_TERMINAL:
        obj.ended_at = now
    session.add(
        StateHistory(
            entity=_ENTITY[type(obj)],
            entity_id=obj.id,
            from_status=current.value,
            to_status=new.value,
            at=now,
            reason=reason,
            actor=actor,
        )
    )


def record_creation(
    session: Session, obj: Stateful, *, reason: str | None = None, actor: str | None = None
) -> None:
    """Append the history row for a freshly created (and flushed) row."""
    session.add(
        StateHistory(
            entity=_ENTITY[type(obj)],
            entity_id=obj.id,
            from_status=None,
            to_status=obj.status.value,
            reason=reason,
            actor=actor,
        )
    )


def job_memory_mb(memory_per_core: int) -> ColumnElement[int]:
    """A job's memory as a pilot books it: its own, or (0: unspecified) its cores' share
    of the queue's slot, ``memory_per_core`` each."""
    return case((Job.memory_mb > 0, Job.memory_mb), else_=Job.cores * memory_per_core)


def _claimable(
    queue: str,
    max_cores: int | None,
    max_memory_mb: int | None,
    max_gpus: int | None,
    memory_per_core: int = 0,
    nodes: int = 1,
) -> Select[Any]:
    """Ids of the activated jobs of ``queue`` that fit the pilot's resources: jobs of as
    many nodes as the pilot's allocation has (a multi-node allocation runs its jobs, no
    one-node job; a one-node pilot never takes a gang-scheduled job)."""
    query = select(Job.id).where(
        Job.status == JobStatus.ACTIVATED, Job.queue == queue, Job.nodes == nodes
    )
    if max_cores is not None:
        query = query.where(Job.cores <= max_cores)
    if max_memory_mb is not None:
        query = query.where(job_memory_mb(memory_per_core) <= max_memory_mb)
    if max_gpus is not None:
        query = query.where(Job.gpus <= max_gpus)
    return query


def claimable_exists(
    session: Session,
    *,
    queue: str,
    max_cores: int | None = None,
    max_memory_mb: int | None = None,
    max_gpus: int | None = None,
    memory_per_core: int = 0,
    nodes: int = 1,
) -> bool:
    """Whether :func:`claim_jobs` would find a job (one index probe, no lock)."""
    first = _claimable(queue, max_cores, max_memory_mb, max_gpus, memory_per_core, nodes)
    first = first.limit(1)
    return session.scalar(first) is not None


def claim_jobs(
    session: Session,
    *,
    queue: str,
    limit: int,
    pilot_id: str,
    worker_id: int | None,
    node: str | None,
    max_cores: int | None = None,
    max_memory_mb: int | None = None,
    max_gpus: int | None = None,
    memory_per_core: int = 0,
    nodes: int = 1,
) -> Sequence[Job]:
    """Atomically move up to ``limit`` activated jobs of ``queue`` to ``sent``.

    Each job fits the limits on its own (``max_memory_mb`` against
    :func:`job_memory_mb`); a pilot packing jobs asks for one at a time.

    Two statements in one transaction: the candidates are read first, then one
    ``UPDATE … WHERE id IN (…) AND status='activated' … RETURNING`` moves them.
    On PostgreSQL the read locks them (``FOR UPDATE SKIP LOCKED``: concurrent
    claimers take other rows); on SQLite the write lock of ``BEGIN IMMEDIATE``
    serialises claims. Either way a job is returned to exactly one caller.

    Why not one statement with the candidates as a subquery: PostgreSQL may
    plan it as a nested-loop semi-join that re-runs the ``LIMIT``-ed, locking
    subquery for every outer row, each run skipping the rows already moved,
    so that one claim for 1 job takes every job of the queue (it did, on a
    small table, in the database-outage test); and SQLite's planner scans
    every activated job through the status index instead of looking the
    candidates up by key.
    """
    if limit < 1:
        return []
    now = utcnow()
    candidates = (
        _claimable(queue, max_cores, max_memory_mb, max_gpus, memory_per_core, nodes)
        .order_by(Job.priority.desc(), Job.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    chosen = list(session.scalars(candidates))
    if not chosen:
        return []
    claimed_ids = list(
        session.scalars(
            update(Job)
            .where(Job.id.in_(chosen), Job.status == JobStatus.ACTIVATED)
            .values(
                status=JobStatus.SENT,
                pilot_id=pilot_id,
                worker_id=worker_id,
                node=node,
                heartbeat_at=now,
                modified_at=now,
            )
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
    )
    if not claimed_ids:
        return []
    session.execute(
        insert(StateHistory),
        [
            {
                "entity": EntityKind.JOB,
                "entity_id": job_id,
                "from_status": JobStatus.ACTIVATED.value,
                "to_status": JobStatus.SENT.value,
                "at": now,
                "reason": f"dispatched to pilot {pilot_id}",
                "actor": pilot_id,
            }
            for job_id in claimed_ids
        ],
    )
    jobs = session.scalars(
        select(Job)
        .where(Job.id.in_(claimed_ids))
        .order_by(Job.priority.desc(), Job.id)
        .execution_options(populate_existing=True)
    ).all()
    return jobs


def advance_jobs(
    session: Session,
    moves: dict[int, JobStatus],
    new: JobStatus,
    *,
    pilot_id: str,
    reason: str,
    values: dict[str, object] | None = None,
) -> list[int]:
    """Set-based :func:`transition` for many jobs of one pilot: one guarded UPDATE per current
    state and one INSERT of their history rows.

    ``moves`` maps job id → the state the caller read. A job that changed state since
    (or is not held by ``pilot_id``) is left alone and not in the returned ids.
    """
    now = utcnow()
    by_current: dict[JobStatus, list[int]] = {}
    for job_id, current in moves.items():
        check_transition(current, new)
        by_current.setdefault(current, []).append(job_id)
    row_values: dict[str, object] = {"status": new, "modified_at": now, **(values or {})}
    if new in JOB_TERMINAL:
        row_values["ended_at"] = now
    moved: list[tuple[int, JobStatus]] = []
    for current, ids in by_current.items():
        done = session.scalars(
            update(Job)
            .where(Job.id.in_(ids), Job.status == current, Job.pilot_id == pilot_id)
            .values(row_values)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        ).all()
        moved += [(job_id, current) for job_id in done]
    if moved:
        session.execute(
            insert(StateHistory),
            [
                {
                    "entity": EntityKind.JOB,
                    "entity_id": job_id,
                    "from_status": current.value,
                    "to_status": new.value,
                    "at": now,
                    "reason": reason,
                    "actor": pilot_id,
                }
                for job_id, current in moved
            ],
        )
    return [job_id for job_id, _ in moved]


def state_history(session: Session, entity: EntityKind, entity_id: int) -> list[StateHistory]:
    """Every state change of one task, job or worker, oldest first."""
    return list(
        session.scalars(
            select(StateHistory)
            .where(StateHistory.entity == entity, StateHistory.entity_id == entity_id)
            .order_by(StateHistory.id)
        )
    )
