"""How jobs are made and end, and how a task's state follows from its jobs.

Every path that ends a job (pilot report, lost heartbeat, vanished worker,
kill) goes through here, so retries and the task roll-up behave the same
whoever noticed the failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from db.models import Job, Task, utcnow
from db.queue import ROW_LOCK, for_change, record_creation, transition
from db.states import JOB_ACTIVE, JOB_TERMINAL, TASK_TERMINAL
from protocol.error_codes import PilotErrorCode
from protocol.states import JobStatus, TaskStatus


def build_job(task: Task, index: int, parameters: dict[str, Any] | None) -> Job:
    """The first attempt of unit ``index`` of ``task``, with the task's resource needs."""
    return Job(
        task_id=task.id,
        job_index=index,
        attempt_nr=1,
        status=JobStatus.DEFINED,
        spec={"parameters": parameters} if parameters is not None else {},
        cores=task.cores,
        nodes=task.nodes,
        memory_mb=task.memory_mb,
        walltime_s=task.walltime_s,
        priority=task.priority,
        gpus=1 if task.gpu_request is not None else 0,
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
        roll_up_at_commit(session, task)
        return retry
    transition(session, job, JobStatus.FAILED, reason=reason, actor=actor)
    roll_up_at_commit(session, task)
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
        nodes=previous.nodes,
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


_ROLL_UP = "hpcaf.tasks_to_roll_up"


def roll_up_at_commit(session: Session, task: Task) -> None:
    """Have :func:`refresh_task` run on ``task`` when this session commits.

    Every writer changes its job rows first and locks task rows last, in task-id
    order, at commit: two writers then cannot each hold a row the other waits for
    (a pilot finishing a job while the watchdog fails others of the same task).
    """
    session.info.setdefault(_ROLL_UP, set()).add(task.id)


@event.listens_for(Session, "before_commit")
def _roll_up_tasks(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint: the outer commit rolls up
        return
    for task_id in sorted(session.info.pop(_ROLL_UP, ())):
        task = session.get(Task, task_id)
        if task is not None:
            refresh_task(session, task)


def refresh_task(session: Session, task: Task) -> None:
    """Derive the task's state from its jobs (running, or how it ended).

    It takes the task's row lock, held until the caller commits; services call
    :func:`roll_up_at_commit` instead, so that the lock is the transaction's last.
    A few indexed lookups rather than loading the task's jobs, so a pilot's report
    costs the same for a task of ten jobs and of a hundred thousand. Rows that
    have not ended are always newest attempts (a superseded attempt is ``closed``),
    and a ``finished`` attempt is never superseded, so counting rows is exact.
    """
    if task.status is TaskStatus.REGISTERED:
        return
    session.flush()
    # Two pilots reporting the last two jobs at once must not each see the other's job
    # still open (on PostgreSQL both would leave the task running for ever): the task's
    # row lock orders them, and the second reads the first's committed job. NO KEY
    # UPDATE, so that it does not wait for writers that only insert jobs of the task.
    session.refresh(task, with_for_update=ROW_LOCK)
    if task.status in (TaskStatus.ABORTED, TaskStatus.BROKEN):
        _cancel_stragglers(session, task)
        return
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


def cancel_open_jobs(
    session: Session, task_id: int, *, reason: str, actor: str | None = None
) -> int:
    """Cancel every job of a task that has not ended; how many were cancelled."""
    cancelled = open_jobs(session, task_id)
    for job in cancelled:
        transition(session, job, JobStatus.CANCELLED, reason=reason, actor=actor)
    return len(cancelled)


def open_jobs(session: Session, task_id: int) -> Sequence[Job]:
    """The jobs of a task that have not ended (always newest attempts), locked in id order."""
    return session.scalars(
        for_change(
            select(Job)
            .where(Job.task_id == task_id, Job.status.not_in(list(JOB_TERMINAL)))
            .order_by(Job.id)
            .execution_options(populate_existing=True)  # as locked, not as first loaded
        )
    ).all()


def _cancel_stragglers(session: Session, task: Task) -> None:
    """Cancel what a concurrent writer left open in a task that was killed or broken.

    A pilot reporting a failure while the task is killed commits a retry that the
    kill's own query could not see; under the task's row lock a new query does.
    Every writer that touches the task's jobs runs this at its commit, so no open
    job outlives an ended task. (Here the task row is locked before job rows: only
    for ended tasks, whose jobs no pilot may take any more.)
    """
    cancel_open_jobs(session, task.id, reason=f"task {task.status.value}")
