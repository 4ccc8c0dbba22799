"""How jobs are made and end, and how a task's state follows from its jobs.

Every path that ends a job (pilot report, lost heartbeat, vanished worker,
kill) goes through here, so retries and the task roll-up behave the same
whoever noticed the failure.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Job, Task, utcnow
from db.queue import record_creation, transition
from db.states import JOB_ACTIVE, JOB_TERMINAL, TASK_TERMINAL, JobStatus, TaskStatus
from harvester.architecture import parse_architecture
from harvester.errors import InvalidRequest
from pilot.errors import PilotErrorCode


def build_job(task: Task, index: int, parameters: dict[str, Any] | None) -> Job:
    """The first attempt of unit ``index`` of ``task``, with the task's resource needs."""
    params = task.params
    try:
        gpu_job = parse_architecture(task.architecture).needs_gpu
    except InvalidRequest:
        gpu_job = False
    return Job(
        task_id=task.id,
        job_index=index,
        attempt_nr=1,
        status=JobStatus.DEFINED,
        spec={"parameters": parameters} if parameters is not None else {},
        cores=int(params.get("coreCount", 1)),
        memory_mb=int(params.get("ramCount") or 0),
        walltime_s=int(params.get("maxWalltime") or 0),
        priority=task.priority,
        gpus=1 if gpu_job else 0,
    )


def fail_job(
    session: Session,
    job: Job,
    task: Task,
    *,
    error_code: int,
    diagnostics: str,
    exit_code: int | None = None,
    actor: str | None = None,
) -> Job | None:
    """End a failed attempt; retry it as a new attempt when attempts remain.

    Returns the new attempt, or ``None`` when the job failed for good.
    """
    job.pilot_error_code = error_code
    job.pilot_error_diag = diagnostics
    if exit_code is not None:
        job.exit_code = exit_code
    reason = f"{_describe_code(error_code)}: {diagnostics}"
    try:
        retryable = PilotErrorCode(error_code).retryable
    except ValueError:
        retryable = True
    if retryable and job.attempt_nr < task.max_attempt and task.status not in TASK_TERMINAL:
        transition(session, job, JobStatus.CLOSED, reason=f"{reason}; retried", actor=actor)
        retry = new_attempt(session, job, reason=f"retry of job {job.id}")
        refresh_task(session, task)
        return retry
    transition(session, job, JobStatus.FAILED, reason=reason, actor=actor)
    refresh_task(session, task)
    return None


def new_attempt(session: Session, previous: Job, *, reason: str) -> Job:
    """A fresh ``defined`` row for the same unit of work, attempt number + 1."""
    job = Job(
        task_id=previous.task_id,
        job_index=previous.job_index,
        attempt_nr=previous.attempt_nr + 1,
        status=JobStatus.DEFINED,
        spec=previous.spec,
        cores=previous.cores,
        memory_mb=previous.memory_mb,
        gpus=previous.gpus,
        walltime_s=previous.walltime_s,
        priority=previous.priority,
    )
    session.add(job)
    session.flush()
    record_creation(session, job, reason=reason)
    return job


def _describe_code(code: int) -> str:
    try:
        return PilotErrorCode(code).describe()
    except ValueError:
        return str(code)


def current_attempts(session: Session, task_id: int) -> list[Job]:
    """The newest attempt of each unit of work of a task."""
    rows = session.scalars(
        select(Job).where(Job.task_id == task_id).order_by(Job.job_index, Job.attempt_nr)
    ).all()
    latest: dict[int, Job] = {}
    for job in rows:
        latest[job.job_index] = job
    return list(latest.values())


def refresh_task(session: Session, task: Task) -> None:
    """Derive the task's state from its jobs (running, or how it ended).

    A few indexed lookups rather than loading the task's jobs, so a pilot's report
    costs the same for a task of ten jobs and of a hundred thousand. Rows that
    have not ended are always newest attempts (a superseded attempt is ``closed``),
    and a ``finished`` attempt is never superseded, so counting rows is exact.
    """
    if task.status in (TaskStatus.REGISTERED, TaskStatus.ABORTED, TaskStatus.BROKEN):
        return
    session.flush()
    open_states = [s for s in JobStatus if s not in JOB_TERMINAL]

    def any_job(states: list[JobStatus]) -> bool:
        first = select(Job.id).where(Job.task_id == task.id, Job.status.in_(states)).limit(1)
        return session.scalar(first) is not None

    if any_job(open_states):
        if task.status is TaskStatus.READY and any_job(list(JOB_ACTIVE)):
            task.started_at = task.started_at or utcnow()
            transition(session, task, TaskStatus.RUNNING, reason="first job dispatched")
        return
    units = (
        session.scalar(
            select(func.count(func.distinct(Job.job_index))).where(Job.task_id == task.id)
        )
        or 0
    )
    if units == 0 or units < task.n_jobs:  # a steered task grows until it has n_jobs
        return
    n_finished = (
        session.scalar(
            select(func.count()).where(Job.task_id == task.id, Job.status == JobStatus.FINISHED)
        )
        or 0
    )
    if n_finished == units:
        final = TaskStatus.DONE
    elif n_finished:
        final = TaskStatus.FINISHED
    else:
        final = TaskStatus.FAILED
    if task.status is not final and task.status not in TASK_TERMINAL:
        transition(session, task, final, reason=f"{n_finished}/{units} jobs finished")
