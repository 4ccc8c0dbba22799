"""The same queue on a real PostgreSQL server (scripts/postgres, loopback, fsync off).

Claims use ``FOR UPDATE SKIP LOCKED`` there, and writers run side by side
(SQLite takes one at a time): these tests check that racing claimers never
share a job, that two jobs ending at once still end their task, and that whole
tasks run, and survive faults, with the harvester on PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select

from db.engine import make_engine, make_sessionmaker
from db.migrate import upgrade
from db.models import EntityKind, Job, Role, StateHistory, Task, utcnow
from db.queue import ROW_LOCK, transition
from db.states import JOB_TERMINAL
from harvester.agents.watchdog import fail_silent_jobs
from harvester.identity import Principal
from harvester.services.lifecycle import fail_job, roll_up_at_commit
from harvester.services.tasks import kill_task
from protocol.states import JobStatus, TaskStatus
from tests.helpers import PG_ENV, REPO, Harvester, harvester_settings, wait_for
from tests.test_claim import (
    _seed,
    assert_claimed_once,
    claims_exactly_what_was_asked,
    race_claims,
)


def test_racing_claims_on_postgres(postgres_database_url: str) -> None:
    engine = make_engine(postgres_database_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    _seed(sessions, 400)
    assert_claimed_once(sessions, race_claims(postgres_database_url), 400)
    engine.dispose()


def test_a_claim_takes_no_more_than_asked_on_postgres(postgres_database_url: str) -> None:
    """The claim once took every job of a small queue for a 1-job request (a locking,
    LIMIT-ed subquery re-run by a nested loop): never again."""
    engine = make_engine(postgres_database_url)
    upgrade(engine)
    claims_exactly_what_was_asked(make_sessionmaker(engine))
    engine.dispose()


def _running_task(url: str, n_jobs: int, heartbeat_age_s: float = 0):  # type: ignore[no-untyped-def]
    """A migrated database with one running task of ``n_jobs`` running jobs of pilot p."""
    engine = make_engine(url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    _seed(sessions, n_jobs)
    with sessions.begin() as s:
        task = s.scalars(select(Task)).one()
        task.status = TaskStatus.RUNNING
        for job in s.scalars(select(Job)):
            job.status, job.pilot_id = JobStatus.RUNNING, "p"
            job.heartbeat_at = utcnow() - timedelta(seconds=heartbeat_age_s)
    return engine, sessions


def _in_threads(*functions: Callable[[], None]) -> None:
    """Run each function on its own thread; re-raise the first error."""
    errors: list[BaseException] = []

    def run(function: Callable[[], None]) -> None:
        try:
            function()
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f,)) for f in functions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors


def _report_finished(sessions, job_id: int, between: Callable[[], None]) -> None:  # type: ignore[no-untyped-def]
    """What update_job does for a finished report, with ``between`` run before the commit."""
    with sessions.begin() as s:
        job = s.get_one(Job, job_id, with_for_update=ROW_LOCK)
        transition(s, job, JobStatus.FINISHED, reason="reported by pilot")
        roll_up_at_commit(s, s.get_one(Task, job.task_id))
        s.flush()
        between()


def test_the_last_two_jobs_ending_together_end_the_task(postgres_database_url: str) -> None:
    """Two pilots report the last two jobs of a task at the same moment. Each transaction
    has ended its job before either looks at the task, so without the task's row lock
    each would see the other's job still running and the task would never end."""
    engine, sessions = _running_task(postgres_database_url, 2)
    with sessions() as s:
        task_id, (a, b) = s.scalars(select(Task.id)).one(), list(s.scalars(select(Job.id)))
    both_ended_their_job = threading.Barrier(2, timeout=20)
    _in_threads(
        lambda: _report_finished(sessions, a, both_ended_their_job.wait),
        lambda: _report_finished(sessions, b, both_ended_their_job.wait),
    )
    with sessions() as s:
        assert s.get_one(Task, task_id).status is TaskStatus.DONE
    engine.dispose()


def test_the_watchdog_never_overwrites_a_report_in_flight(postgres_database_url: str) -> None:
    """The watchdog finds two silent jobs while the pilot of one is reporting it finished.
    The report wins, the other job is retried, and neither transaction deadlocks (the
    watchdog skips the job being reported; task rows are locked last, at commit)."""
    engine, sessions = _running_task(postgres_database_url, 2, heartbeat_age_s=60)
    with sessions() as s:
        a, b = list(s.scalars(select(Job.id).order_by(Job.id)))
    reporting = threading.Event()

    def pilot_reports_b() -> None:
        _report_finished(sessions, b, lambda: (reporting.set(), time.sleep(1.0)))

    def watchdog() -> None:
        assert reporting.wait(20)
        with sessions.begin() as s:
            assert fail_silent_jobs(s, timeout_s=30) == 1  # b is being reported: skipped

    _in_threads(pilot_reports_b, watchdog)
    with sessions() as s:
        jobs = {(j.job_index, j.attempt_nr): j.status for j in s.scalars(select(Job))}
        b_history = s.scalars(
            select(StateHistory.to_status).where(
                StateHistory.entity == EntityKind.JOB, StateHistory.entity_id == b
            )
        ).all()
    index = {a: 0, b: 1}
    assert jobs[(index[b], 1)] is JobStatus.FINISHED and b_history == ["finished"]
    assert jobs[(index[a], 1)] is JobStatus.CLOSED and jobs[(index[a], 2)] is JobStatus.DEFINED
    engine.dispose()


def test_a_retry_made_while_the_task_is_killed_is_cancelled_too(
    postgres_database_url: str,
) -> None:
    """A pilot reports job a failed (a retry is made) while the owner kills the task.
    The kill waits for a's lock, then finds a ended, and its query cannot see the
    retry committed meanwhile. Without the sweep at the kill's commit, that retry
    would stay open in an aborted task, be brokered and run."""
    engine, sessions = _running_task(postgres_database_url, 2)
    with sessions() as s:
        task_id, a = s.scalars(select(Task.id)).one(), min(s.scalars(select(Job.id)))
    failing = threading.Event()

    def pilot_reports_a_failed() -> None:
        with sessions.begin() as s:
            job = s.get_one(Job, a, with_for_update=ROW_LOCK)
            retry = fail_job(s, job, s.get_one(Task, task_id), error_code=1305, diagnostics="x")
            assert retry is not None
            s.flush()
            failing.set()
            time.sleep(1.0)  # the kill starts meanwhile, and waits for a

    def owner_kills() -> None:
        assert failing.wait(20)
        with sessions.begin() as s:
            kill_task(s, Principal("alice", Role.USER, 0), task_id)

    _in_threads(pilot_reports_a_failed, owner_kills)
    with sessions() as s:
        assert s.get_one(Task, task_id).status is TaskStatus.ABORTED
        jobs = s.scalars(select(Job).order_by(Job.id)).all()
    assert len(jobs) == 3, "the failed attempt was retried"
    assert [j.status for j in jobs if j.status not in JOB_TERMINAL] == [], "nothing left open"
    assert jobs[-1].status is JobStatus.CANCELLED
    engine.dispose()


@pytest.mark.e2e
def test_task_on_postgres(
    postgres_database_url: str, harvester_factory: Callable[..., Harvester]
) -> None:
    h = harvester_factory(None, HPCAF_DATABASE_URL=postgres_database_url)
    task_id = h.submit(
        "--containerImage",
        "base",
        "--exec",
        "echo pg > pg.txt",
        "--outputs",
        "pg.txt",
        "--outDS",
        "user.alice.pg",
        "--nJobs",
        "3",
    )
    assert h.wait_task(task_id, 120)["status"] == "done"
    assert h.query("SELECT count(*) FROM files WHERE kind = 'output'")[0][0] == 3
    assert (
        h.query(
            "SELECT count(*) FROM state_history WHERE entity = 'job' AND to_status = 'finished'"
        )[0][0]
        == 3
    )


def _postgres(command: str) -> None:
    done = subprocess.run(
        [str(REPO / "scripts" / "postgres"), command],
        env={**os.environ, **PG_ENV},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.e2e
def test_a_database_outage_is_ridden_out(
    postgres_database_url: str, harvester_factory: Callable[..., Harvester]
) -> None:
    """PostgreSQL stopped for 8 s while jobs run: the harvester and its pilots wait it out
    (one-line warnings, no crash, no tracebacks for it) and the task ends done, each job
    finished exactly once."""
    h = harvester_factory(None, HPCAF_DATABASE_URL=postgres_database_url)
    task_id = h.submit(
        "--containerImage", "base", "--exec", "sleep 4; echo ok > ok.txt",
        "--outputs", "ok.txt", "--outDS", "user.alice.outage", "--nJobs", "6",
    )  # fmt: skip
    wait_for(
        lambda: h.query("SELECT count(*) FROM jobs WHERE status = 'running'")[0][0] > 0,
        timeout=90,
        what="a running job",
    )
    _postgres("stop")
    try:
        time.sleep(8)
        assert h.proc is not None and h.proc.poll() is None, "the harvester died in the outage"
    finally:
        _postgres("start")
    assert h.wait_task(task_id, 240)["status"] == "done"
    finished = h.query(
        "SELECT job_index, count(*) FROM jobs WHERE status = 'finished' GROUP BY job_index"
    )
    assert sorted(finished) == [(i, 1) for i in range(6)]
    assert h.query("SELECT count(*) FROM files WHERE kind = 'output'")[0][0] == 6
    log = h.log_text()
    assert "database unavailable" in log and "database reachable again" in log
    assert log.count("database unavailable") <= 3  # logged per outage, not per request
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]
    assert h.proc is not None and h.proc.poll() is None


@pytest.mark.e2e
def test_harvester_killed_mid_campaign_on_postgres(
    postgres_database_url: str, harvester_factory: Callable[..., Harvester]
) -> None:
    """SIGKILL the harvester in the middle of a 200-job task on PostgreSQL and restart it:
    the task ends done, every job has exactly one finished attempt, and no output is
    missing or registered twice."""
    n = 200
    h = harvester_factory(
        harvester_settings(max_workers=4), HPCAF_DATABASE_URL=postgres_database_url
    )
    task_id = h.submit(
        "--containerImage", "base", "--exec", "echo $HPCAF_JOB_INDEX > i.txt",
        "--outputs", "i.txt", "--outDS", "user.alice.campaign", "--nJobs", str(n),
    )  # fmt: skip

    def finished() -> int:
        return int(h.query("SELECT count(*) FROM jobs WHERE status = 'finished'")[0][0])

    wait_for(lambda: finished() >= 40, 300, "40 finished jobs")
    assert finished() < n, "the task ended before the harvester could be killed"
    h.stop(signal.SIGKILL)
    time.sleep(3)  # pilots keep running; their calls fail and are retried
    h.start()
    assert h.wait_task(task_id, 600)["status"] == "done"
    per_index = h.query(
        "SELECT job_index, count(*) FROM jobs WHERE task_id = :t AND status = 'finished' "
        "GROUP BY job_index",
        t=task_id,
    )
    assert sorted(per_index) == [(i, 1) for i in range(n)]
    outputs = h.query(
        "SELECT j.job_index, count(*) FROM files f JOIN jobs j ON f.job_id = j.id "
        "WHERE f.kind = 'output' AND j.task_id = :t GROUP BY j.job_index",
        t=task_id,
    )
    assert sorted(outputs) == [(i, 1) for i in range(n)]
