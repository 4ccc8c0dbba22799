"""Counts the monitor shows: jobs by status per task or queue, errors, a task's progress.

(Workers per queue and state: :func:`harvester.services.queues.worker_counts`.)

The counts are GROUP BY queries over indexed columns; none loads rows into
Python. A task's progress is a share of its counts, the same for the API and
the dashboard.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Job
from db.states import JOB_TERMINAL
from harvester.services.listing import JobFilter, job_query
from protocol.error_codes import PilotErrorCode
from protocol.states import JobStatus

GroupBy = Literal["queue", "task", "status"]


def job_counts(session: Session, f: JobFilter, group_by: GroupBy) -> list[dict[str, Any]]:
    """``[{key, counts: {status: n}, total}]`` over every attempt that matches ``f``."""
    matching = job_query(f).subquery()
    key = {"queue": matching.c.queue, "task": matching.c.task_id, "status": matching.c.status}[
        group_by
    ]
    rows = session.execute(
        select(key, matching.c.status, func.count()).group_by(key, matching.c.status)
    ).all()
    grouped: dict[Any, dict[str, int]] = defaultdict(dict)
    for k, status, n in rows:
        grouped[k][str(getattr(status, "value", status))] = int(n)
    return [
        {"key": k, "counts": counts, "total": sum(counts.values())}
        for k, counts in sorted(grouped.items(), key=lambda item: (item[0] is None, str(item[0])))
    ]


def error_summary(session: Session, f: JobFilter) -> list[dict[str, Any]]:
    """Error codes with their counts, the tasks they hit and an example (BigPanDA's errors page)."""
    matching = job_query(f).where(Job.pilot_error_code.is_not(None)).subquery()
    rows = session.execute(
        select(
            matching.c.pilot_error_code,
            func.count(),
            func.count(func.distinct(matching.c.task_id)),
            func.max(matching.c.id),
        )
        .group_by(matching.c.pilot_error_code)
        .order_by(func.count().desc(), matching.c.pilot_error_code)
    ).all()
    examples = {
        j.id: j for j in session.scalars(select(Job).where(Job.id.in_([r[3] for r in rows])))
    }
    summary = []
    for code, count, tasks, example_id in rows:
        try:
            name = PilotErrorCode(code).name.lower()
        except ValueError:
            name = "unknown"
        example = examples.get(example_id)
        summary.append(
            {
                "code": int(code),
                "name": name,
                "count": int(count),
                "tasks": int(tasks),
                "example_job_id": int(example_id),
                "example_diag": example.pilot_error_diag if example else None,
            }
        )
    return summary


def progress(counts: dict[str, int], n_jobs: int) -> float:
    """The share of the task's jobs that ended (a retried job counts once, by its newest
    attempt), from 0 to 1."""
    ended = sum(counts.get(s.value, 0) for s in JOB_TERMINAL if s is not JobStatus.CLOSED)
    return round(ended / max(n_jobs, 1), 4)
