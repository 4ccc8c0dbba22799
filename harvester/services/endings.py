"""Which jobs of a task ended after a cursor: what a client following a task reads.

The cursor is the id of the append-only state history: a job's move to
``finished``, ``failed`` or ``cancelled`` is one history row, written in the
transaction that ended the job, so a client that passes back the last cursor
it got sees every ending exactly once, across its own restarts and the
harvester's (the history is in the database, not in a process).
"""

from __future__ import annotations

import base64

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import EntityKind, File, FileKind, Job, StateHistory, Task
from harvester.stores.files import FileStore
from protocol.jobs import EndedJob, JobEndings
from protocol.results import ResultFile
from protocol.states import JobStatus

FINAL_JOB_STATES = (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELLED)
"""A job attempt in one of these is the job's last (a retried attempt ends ``closed``)."""


def ended_jobs(
    session: Session,
    task: Task,
    after: int,
    *,
    files: FileStore | None = None,
    inline_max: int = 0,
    limit: int = 5000,
) -> JobEndings:
    """The task's jobs that ended after history row ``after``, oldest ending first; their
    outputs of at most ``inline_max`` bytes come with their content (read from ``files``)."""
    rows = session.execute(
        select(StateHistory.id, Job)
        .join(Job, Job.id == StateHistory.entity_id)
        .where(
            StateHistory.entity == EntityKind.JOB,
            # the task's jobs first (their index), then their history by (entity, id): a
            # join alone scans every job's history in the database
            StateHistory.entity_id.in_(select(Job.id).where(Job.task_id == task.id)),
            StateHistory.id > after,
            Job.task_id == task.id,
            StateHistory.to_status.in_([s.value for s in FINAL_JOB_STATES]),
        )
        .order_by(StateHistory.id)
        .limit(limit)
    ).all()
    cursor = after
    jobs: dict[int, Job] = {}
    for history_id, job in rows:
        cursor = max(cursor, history_id)
        jobs[job.id] = job
    outputs: dict[int, list[ResultFile]] = {}
    if jobs:
        for row in session.scalars(
            select(File).where(File.job_id.in_(jobs), File.kind == FileKind.OUTPUT)
        ):
            assert row.job_id is not None
            content = None
            if files is not None and row.size <= inline_max:
                content = base64.b64encode(files.path(row.sha256).read_bytes()).decode()
            outputs.setdefault(row.job_id, []).append(
                ResultFile(
                    name=row.name,
                    sha256=row.sha256,
                    size=row.size,
                    job_id=row.job_id,
                    content_b64=content,
                )
            )
    return JobEndings(
        cursor=cursor,
        task_status=task.status,
        jobs=[
            EndedJob(
                job_id=job.id,
                job_index=job.job_index,
                attempt_nr=job.attempt_nr,
                status=job.status,
                exit_code=job.exit_code,
                pilot_error_code=job.pilot_error_code,
                pilot_error_diag=job.pilot_error_diag,
                outputs=outputs.get(job.id, []),
            )
            for job in jobs.values()
        ],
    )
