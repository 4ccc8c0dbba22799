"""The job claim: atomic, ordered by priority, never the same job to two callers."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import select

from db.engine import make_engine, make_sessionmaker
from db.migrate import upgrade
from db.models import EntityKind, Job, StateHistory, Task
from db.queue import claim_jobs
from protocol.states import JobStatus, TaskStatus


def _seed(sessions, n: int, queue: str = "Q", priority: int = 1000) -> None:  # type: ignore[no-untyped-def]
    with sessions.begin() as s:
        task = Task(
            name="t",
            owner="alice",
            status=TaskStatus.READY,
            params={},
            image="base",
            out_ds="user.alice.t",
            n_jobs=n,
        )
        s.add(task)
        s.flush()
        s.add_all(
            Job(
                task_id=task.id,
                job_index=i,
                status=JobStatus.ACTIVATED,
                queue=queue,
                spec={},
                priority=priority,
            )
            for i in range(n)
        )


def test_claim_orders_by_priority_and_respects_limit(session_factory) -> None:  # type: ignore[no-untyped-def]
    _seed(session_factory, 3, priority=900)
    _seed(session_factory, 2, priority=1100)
    _seed(session_factory, 2, queue="OTHER")
    with session_factory.begin() as s:
        jobs = claim_jobs(s, queue="Q", limit=3, pilot_id="p", worker_id=None, node="n")
        assert [j.priority for j in jobs] == [1100, 1100, 900]
        assert all(j.status is JobStatus.SENT and j.pilot_id == "p" for j in jobs)
    with session_factory() as s:
        left = s.scalars(select(Job).where(Job.status == JobStatus.ACTIVATED)).all()
        assert Counter(j.queue for j in left) == {"Q": 2, "OTHER": 2}
        history = s.scalars(select(StateHistory).where(StateHistory.entity == EntityKind.JOB))
        assert sum(1 for h in history if h.to_status == "sent") == 3


def test_claim_respects_slot_size(session_factory) -> None:  # type: ignore[no-untyped-def]
    _seed(session_factory, 1)
    with session_factory.begin() as s:
        s.execute(Job.__table__.update().values(cores=8))
    with session_factory.begin() as s:
        assert (
            claim_jobs(s, queue="Q", limit=5, pilot_id="p", worker_id=None, node=None, max_cores=4)
            == []
        )
        assert (
            len(
                claim_jobs(
                    s, queue="Q", limit=5, pilot_id="p", worker_id=None, node=None, max_cores=8
                )
            )
            == 1
        )


def race_claims(url: str, n_pilots: int = 8, batch: int = 7) -> dict[str, list[int]]:
    """Claimers on their own threads, each with its own engine (as separate harvester
    processes would have), started together, until none is left."""
    got: dict[str, list[int]] = {}
    barrier = threading.Barrier(n_pilots)

    def pilot(name: str) -> None:
        mine: list[int] = []
        engine = make_engine(url)
        sessions = make_sessionmaker(engine)
        barrier.wait()
        while True:
            with sessions.begin() as s:
                jobs = claim_jobs(
                    s, queue="Q", limit=batch, pilot_id=name, worker_id=None, node=None
                )
                ids = [j.id for j in jobs]
            if not ids:
                break
            mine += ids
            time.sleep(0.02)  # the pilot runs what it got; without a pause one thread
            # can win every turn of SQLite's lock while the others back off
        got[name] = mine
        engine.dispose()

    threads = [threading.Thread(target=pilot, args=(f"p{i}",)) for i in range(n_pilots)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got


def assert_claimed_once(sessions, got: dict[str, list[int]], n_jobs: int) -> None:  # type: ignore[no-untyped-def]
    claimed = [i for ids in got.values() for i in ids]
    assert len(claimed) == n_jobs and len(set(claimed)) == n_jobs
    assert sum(1 for ids in got.values() if ids) > 1
    with sessions() as s:
        holders = dict(s.execute(select(Job.id, Job.pilot_id)).all())
    for name, ids in got.items():
        assert all(holders[i] == name for i in ids)


def test_racing_claims_never_share_a_job(tmp_path: Path) -> None:
    """Eight threads with their own connections claim 400 jobs from one SQLite file."""
    url = f"sqlite:///{tmp_path / 'race.db'}"
    engine = make_engine(url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    _seed(sessions, 400)
    assert_claimed_once(sessions, race_claims(url), 400)


def claims_exactly_what_was_asked(sessions) -> None:  # type: ignore[no-untyped-def]
    """A claim for k jobs takes k jobs, on a table small enough for any plan."""
    from sqlalchemy import func, select

    from db.queue import claim_jobs

    _seed(sessions, 6)
    for limit, expected, expected_total in ((1, 1, 1), (3, 3, 4), (5, 2, 6), (1, 0, 6)):
        with sessions.begin() as s:
            jobs = claim_jobs(s, queue="Q", limit=limit, pilot_id="p", worker_id=None, node=None)
            assert len(jobs) == expected
        with sessions.begin() as s:
            sent = s.scalar(select(func.count()).where(Job.status == JobStatus.SENT))
            assert sent == expected_total


def test_a_claim_takes_no_more_than_asked(session_factory) -> None:  # type: ignore[no-untyped-def]
    claims_exactly_what_was_asked(session_factory)
