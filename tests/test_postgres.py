"""The same queue on a real PostgreSQL server (scripts/postgres, loopback, fsync off).

Claims use ``FOR UPDATE SKIP LOCKED`` there; these tests check that racing
claimers never share a job and that a whole task runs with the harvester on
PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from db.engine import make_engine, make_sessionmaker
from db.migrate import upgrade
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
