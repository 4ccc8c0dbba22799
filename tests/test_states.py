"""The state rules: declared transitions only, terminal states final, history appended."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from db.errors import IllegalTransition
from db.models import EntityKind, Job, StateHistory, Task
from db.queue import record_creation, transition
from db.states import (
    JOB_TERMINAL,
    JOB_TRANSITIONS,
    TASK_TERMINAL,
    TASK_TRANSITIONS,
    WORKER_TERMINAL,
    WORKER_TRANSITIONS,
    allowed,
    check_transition,
)
from protocol.states import JobStatus, TaskStatus, WorkerStatus


def test_every_state_has_rules() -> None:
    assert set(TASK_TRANSITIONS) == set(TaskStatus)
    assert set(JOB_TRANSITIONS) == set(JobStatus)
    assert set(WORKER_TRANSITIONS) == set(WorkerStatus)


def test_terminal_job_and_worker_states_are_final() -> None:
    for state in JOB_TERMINAL:
        assert JOB_TRANSITIONS[state] == frozenset()
    for state in WORKER_TERMINAL:
        assert WORKER_TRANSITIONS[state] == frozenset()
    # a task only leaves an ended state through an explicit retry (back to ready)
    for state in TASK_TERMINAL:
        assert TASK_TRANSITIONS[state] <= {TaskStatus.READY}
    assert TASK_TRANSITIONS[TaskStatus.DONE] == frozenset()


def test_jobs_never_go_back() -> None:
    order = list(JobStatus)
    forward = [
        JobStatus.DEFINED,
        JobStatus.ACTIVATED,
        JobStatus.SENT,
        JobStatus.STARTING,
        JobStatus.RUNNING,
    ]
    for i, state in enumerate(forward):
        for earlier in forward[: i + 1]:
            assert not allowed(state, earlier), (state, earlier)
    assert len(order) == 9


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (JobStatus.FINISHED, JobStatus.RUNNING),
        (JobStatus.DEFINED, JobStatus.RUNNING),
        (JobStatus.ACTIVATED, JobStatus.FINISHED),
        (TaskStatus.DONE, TaskStatus.READY),
        (WorkerStatus.MISSED, WorkerStatus.RUNNING),
    ],
)
def test_illegal_transitions_raise(current, new) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(IllegalTransition, match="cannot go from"):
        check_transition(current, new)


def test_mixed_kinds_are_never_allowed() -> None:
    assert not allowed(JobStatus.RUNNING, TaskStatus.RUNNING)


def test_transition_writes_history(session) -> None:  # type: ignore[no-untyped-def]
    task = Task(
        name="t",
        owner="alice",
        status=TaskStatus.REGISTERED,
        params={},
        image="base",
        out_ds="user.alice.t",
        n_jobs=1,
    )
    session.add(task)
    session.flush()
    record_creation(session, task, reason="submitted")
    transition(session, task, TaskStatus.READY, reason="split")
    with pytest.raises(IllegalTransition):
        transition(session, task, TaskStatus.REGISTERED)
    assert task.status is TaskStatus.READY
    job = Job(task_id=task.id, job_index=0, status=JobStatus.DEFINED, spec={})
    session.add(job)
    session.flush()
    transition(session, job, JobStatus.ACTIVATED, reason="brokered")
    session.commit()
    rows = session.scalars(select(StateHistory).order_by(StateHistory.id)).all()
    assert [(r.entity, r.from_status, r.to_status) for r in rows] == [
        (EntityKind.TASK, None, "registered"),
        (EntityKind.TASK, "registered", "ready"),
        (EntityKind.JOB, "defined", "activated"),
    ]


def test_job_counts_count_only_the_newest_attempts(session_factory) -> None:  # type: ignore[no-untyped-def]
    """Superseded attempts are left out: closed ones, and failed ones retried by hand."""
    from db.models import Job, Task
    from harvester.services.tasks import job_counts
    from protocol.states import JobStatus, TaskStatus

    with session_factory.begin() as s:
        task = Task(
            name="t",
            owner="a",
            status=TaskStatus.RUNNING,
            kind="runcontainer",
            params={},
            image="base",
            out_ds="user.a.t",
            n_jobs=4,
        )
        s.add(task)
        s.flush()
        rows = [
            (0, 1, JobStatus.FINISHED),
            (1, 1, JobStatus.CLOSED),  # retried automatically
            (1, 2, JobStatus.RUNNING),
            (2, 1, JobStatus.FAILED),  # retried by hand (pbook retry)
            (2, 2, JobStatus.FAILED),
            (2, 3, JobStatus.FINISHED),
            (3, 1, JobStatus.CANCELLED),
        ]
        for index, attempt, status in rows:
            s.add(Job(task_id=task.id, job_index=index, attempt_nr=attempt, status=status, spec={}))
        task_id = task.id
    with session_factory() as s:
        assert job_counts(s, [task_id])[task_id] == {
            "finished": 2,
            "running": 1,
            "cancelled": 1,
        }
