"""Leases let several harvester instances share one database: one holder at a time,
taken over when the holder's lease expires, given back on a clean stop."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from db import leases
from db.models import Lease, utcnow
from tests.helpers import Harvester, free_port, wait_for


def test_one_holder_at_a_time(session_factory: sessionmaker[Session]) -> None:
    name = leases.queue_lease("ANALY_X")
    with session_factory.begin() as s:
        assert leases.take(s, name, "a", 30) is not None
    with session_factory.begin() as s:
        assert leases.take(s, name, "b", 30) is None  # held by a
        assert leases.take(s, name, "a", 30) is not None  # a renews
    with session_factory.begin() as s:  # a stops renewing: its lease expires
        s.execute(update(Lease).values(expires_at=utcnow() - timedelta(seconds=1)))
    with session_factory.begin() as s:
        assert leases.take(s, name, "b", 30) is not None
    with session_factory.begin() as s:
        assert leases.take(s, name, "a", 30) is None  # a, back, finds b holding it
        assert leases.holders(s)[name][0] == "b"
        assert leases.give_back(s, "b") == 1
    with session_factory.begin() as s:
        assert leases.take(s, name, "a", 30) is not None


def test_held_leases_are_trusted_only_until_their_deadline() -> None:
    held = leases.HeldLeases("me")
    held.set("x", time.monotonic() + 60)
    held.set("y", time.monotonic() - 1)
    assert held.holds("x") and not held.holds("y") and not held.holds("z")
    assert held.names() == ["x"]
    held.set("x", None)
    assert not held.holds("x")


def _holders(h: Harvester) -> dict[str, str]:
    return {name: holder for name, holder in h.query("SELECT name, holder FROM leases")}


def _held_by(h: Harvester, pid: int) -> bool:
    holders = _holders(h)
    wanted = {leases.GLOBAL, leases.queue_lease("ANALY_LOCAL"), leases.queue_lease("ANALY_MANUAL")}
    return wanted <= set(holders) and all(f":{pid}:" in holders[n] for n in wanted)


@pytest.mark.e2e
def test_the_other_instance_takes_over_when_one_is_killed(
    postgres_database_url: str, harvester_factory: Callable[..., Harvester], tmp_path: Path
) -> None:
    """Two `harvester serve` on one PostgreSQL database: the first holds every lease and
    the second stays idle; SIGKILL the first mid-task and the second takes its leases over
    within the lease time and finishes the task, each job finished exactly once."""
    ports = [free_port(), free_port()]
    env = {
        "HPCAF_DATABASE_URL": postgres_database_url,
        "HPCAF_LEASE_S": "4",
        # pilots know both instances and fail over; the file store is shared
        "HPCAF_PUBLIC_URL": ",".join(f"http://127.0.0.1:{p}" for p in ports),
        "HPCAF_FILES_DIR": str(tmp_path / "shared-files"),
    }
    first = harvester_factory(None, HPCAF_PORT=str(ports[0]), **env)
    assert first.proc is not None
    wait_for(lambda: _held_by(first, first.proc.pid), 20, "the first instance's leases")  # type: ignore[union-attr]
    second = harvester_factory(None, HPCAF_PORT=str(ports[1]), **env)
    assert second.proc is not None
    task_id = first.submit(
        "--containerImage", "base", "--exec", "sleep 1; echo $HPCAF_JOB_INDEX > out.txt",
        "--outputs", "out.txt", "--outDS", "user.alice.twin", "--nJobs", "12",
    )  # fmt: skip
    wait_for(
        lambda: first.query("SELECT count(*) FROM jobs WHERE status = 'finished'")[0][0] >= 2,
        120,
        "two finished jobs",
    )
    assert _held_by(first, first.proc.pid), "the second instance took a lease from a live one"
    assert "taken by" not in second.log_text()
    first.proc.kill()
    first.proc.wait()
    killed_at = time.monotonic()
    wait_for(lambda: _held_by(second, second.proc.pid), 20, "the second instance to take over")  # type: ignore[union-attr]
    takeover_s = time.monotonic() - killed_at
    assert takeover_s < 4 + 4 / 3 + 2, takeover_s  # the lease, one keeper cycle, slack
    assert second.wait_task(task_id, 240)["status"] == "done"
    finished = second.query(
        "SELECT job_index, count(*) FROM jobs WHERE task_id = :t AND status = 'finished' "
        "GROUP BY job_index",
        t=task_id,
    )
    assert sorted(finished) == [(i, 1) for i in range(12)]
    outputs = second.query(
        "SELECT j.job_index, count(*) FROM files f JOIN jobs j ON f.job_id = j.id "
        "WHERE f.kind = 'output' AND j.task_id = :t GROUP BY j.job_index",
        t=task_id,
    )
    assert sorted(outputs) == [(i, 1) for i in range(12)]
    second.stop()  # a clean stop gives the leases back
    assert all(
        expires < utcnow().replace(tzinfo=None) if expires.tzinfo is None else expires < utcnow()
        for (expires,) in second.query("SELECT expires_at FROM leases")
    )
