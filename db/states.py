"""The transitions allowed between the states of tasks, jobs and workers.

The states themselves are :mod:`protocol.states` (replies and pilot reports
name them); which moves between them are legal is the database's rule, kept
here. Every state change in hpcaf goes through :func:`check_transition`; the
tables below are the single place that says which moves are legal. A state
never goes back: a retried job is a *new* job row (attempt) and the old one is
``closed``.
"""

from __future__ import annotations

import enum

from db.errors import IllegalTransition
from protocol.states import TASK_TERMINAL as TASK_TERMINAL  # where the rules below read it
from protocol.states import JobStatus, TaskStatus, WorkerStatus

JOB_TERMINAL = frozenset(
    {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.CLOSED}
)
JOB_ACTIVE = frozenset({JobStatus.SENT, JobStatus.STARTING, JobStatus.RUNNING})
"""Jobs held by a pilot: they must heartbeat."""
WORKER_TERMINAL = frozenset(
    {WorkerStatus.FINISHED, WorkerStatus.FAILED, WorkerStatus.CANCELLED, WorkerStatus.MISSED}
)
WORKER_ACTIVE = frozenset({WorkerStatus.SUBMITTED, WorkerStatus.RUNNING})

_T = TaskStatus
TASK_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    _T.REGISTERED: frozenset({_T.READY, _T.ABORTED, _T.BROKEN}),
    _T.READY: frozenset({_T.RUNNING, _T.DONE, _T.FINISHED, _T.FAILED, _T.ABORTED, _T.BROKEN}),
    _T.RUNNING: frozenset({_T.DONE, _T.FINISHED, _T.FAILED, _T.ABORTED, _T.BROKEN}),
    # A retry re-opens a task that ended with failed jobs: new attempts are made.
    _T.FINISHED: frozenset({_T.READY}),
    _T.FAILED: frozenset({_T.READY}),
    _T.ABORTED: frozenset({_T.READY}),
    _T.DONE: frozenset(),
    _T.BROKEN: frozenset(),
}

_J = JobStatus
JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    _J.DEFINED: frozenset({_J.ACTIVATED, _J.CANCELLED, _J.FAILED}),
    _J.ACTIVATED: frozenset({_J.SENT, _J.CANCELLED, _J.FAILED}),
    _J.SENT: frozenset({_J.STARTING, _J.RUNNING, _J.FINISHED, _J.FAILED, _J.CANCELLED, _J.CLOSED}),
    _J.STARTING: frozenset({_J.RUNNING, _J.FINISHED, _J.FAILED, _J.CANCELLED, _J.CLOSED}),
    _J.RUNNING: frozenset({_J.FINISHED, _J.FAILED, _J.CANCELLED, _J.CLOSED}),
    _J.FINISHED: frozenset(),
    _J.FAILED: frozenset(),
    _J.CANCELLED: frozenset(),
    _J.CLOSED: frozenset(),
}

PILOT_REPORTABLE = frozenset(
    {JobStatus.STARTING, JobStatus.RUNNING, JobStatus.FINISHED, JobStatus.FAILED}
)
"""The states a pilot may report in ``update_job`` (as in PanDA)."""

_W = WorkerStatus
WORKER_TRANSITIONS: dict[WorkerStatus, frozenset[WorkerStatus]] = {
    _W.SUBMITTED: frozenset({_W.RUNNING, _W.FINISHED, _W.FAILED, _W.CANCELLED, _W.MISSED}),
    _W.RUNNING: frozenset({_W.FINISHED, _W.FAILED, _W.CANCELLED, _W.MISSED}),
    _W.FINISHED: frozenset(),
    _W.FAILED: frozenset(),
    _W.CANCELLED: frozenset(),
    _W.MISSED: frozenset(),
}

_RULES: dict[type[enum.StrEnum], dict] = {
    TaskStatus: TASK_TRANSITIONS,
    JobStatus: JOB_TRANSITIONS,
    WorkerStatus: WORKER_TRANSITIONS,
}


def allowed(current: enum.StrEnum, new: enum.StrEnum) -> bool:
    """Whether ``current → new`` is a declared transition."""
    if type(current) is not type(new):
        return False
    return new in _RULES[type(current)][current]


def check_transition(current: enum.StrEnum, new: enum.StrEnum) -> None:
    """Raise :class:`IllegalTransition` unless ``current → new`` is declared."""
    if not allowed(current, new):
        kind = type(current).__name__.removesuffix("Status").lower()
        raise IllegalTransition(f"{kind} cannot go from {current.value!r} to {new.value!r}")
