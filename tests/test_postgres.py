"""The same queue on a real PostgreSQL server (scripts/postgres, loopback, fsync off).

Claims use ``FOR UPDATE SKIP LOCKED`` there; these tests check that racing
claimers never share a job and that a whole task runs with the harvester on
PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import create_engine, select, text

from db.engine import make_engine, make_sessionmaker
from db.migrate import upgrade
from db.models import Job
from db.queue import claim_jobs
from tests.helpers import REPO, Harvester
from tests.test_claim import _seed

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
    got: dict[str, list[int]] = {}
    barrier = threading.Barrier(8)

    def pilot(name: str) -> None:
        mine: list[int] = []
        barrier.wait()
        while True:
            with sessions.begin() as s:
                ids = [
                    j.id
                    for j in claim_jobs(
                        s, queue="Q", limit=7, pilot_id=name, worker_id=None, node=None
                    )
                ]
            if not ids:
                break
            mine += ids
        got[name] = mine

    threads = [threading.Thread(target=pilot, args=(f"p{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [i for ids in got.values() for i in ids]
    assert len(claimed) == 400 and len(set(claimed)) == 400
    with sessions() as s:
        holders = dict(s.execute(select(Job.id, Job.pilot_id)).all())
    assert all(holders[i] == name for name, ids in got.items() for i in ids)
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
