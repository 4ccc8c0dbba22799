"""The same queue on a real PostgreSQL server (scripts/postgres, loopback, fsync off).

Claims use ``FOR UPDATE SKIP LOCKED`` there; these tests check that racing
claimers never share a job and that a whole task runs with the harvester on
PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import create_engine, text

from db.engine import make_engine, make_sessionmaker
from db.migrate import upgrade
from tests.helpers import REPO, Harvester
from tests.test_claim import _seed, assert_claimed_once, race_claims

PG_ENV = {"HPCAF_PG_DIR": "/tmp/hpcaf-pg-tests", "HPCAF_PG_PORT": "54331"}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    env = {**os.environ, **PG_ENV}
    up = subprocess.run(
        [str(REPO / "scripts" / "postgres"), "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert up.returncode == 0, up.stdout + up.stderr
    url = up.stdout.strip().splitlines()[-1].split("=", 1)[1]
    yield url.rsplit("/", 1)[0]
    subprocess.run(
        [str(REPO / "scripts" / "postgres"), "down"], env=env, capture_output=True, timeout=120
    )


@pytest.fixture
def database_url(postgres_server: str) -> Iterator[str]:
    """A fresh database for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    yield f"{postgres_server}/{name}"
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


def test_racing_claims_on_postgres(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    _seed(sessions, 400)
    assert_claimed_once(sessions, race_claims(database_url), 400)
    engine.dispose()


@pytest.mark.e2e
def test_task_on_postgres(database_url: str, harvester_factory: Callable[..., Harvester]) -> None:
    h = harvester_factory(None, HPCAF_DATABASE_URL=database_url)
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
