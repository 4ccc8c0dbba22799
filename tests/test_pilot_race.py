"""Ten pilots racing on one queue for 1,000 jobs, through the real API over HTTP: no job
is ever held by two pilots (checked in the state history), none is left behind."""

from __future__ import annotations

import threading
from collections import Counter

import httpx
import pytest

from tests.helpers import Harvester, wait_for

pytestmark = pytest.mark.database

N_JOBS = 1000
N_PILOTS = 10


def _pilot(h: Harvester, name: str, done: Counter[str], errors: list[str]) -> None:
    headers = {"Authorization": f"Bearer {h.tokens['pilot']}"}
    with httpx.Client(base_url=h.url, headers=headers, timeout=60) as c:
        empty = 0
        while empty < 3:
            reply = c.post(
                "/api/v1/pilot/acquire_jobs",
                json={"queue": "ANALY_MANUAL", "pilot_id": name, "n_jobs": 7},
            )
            jobs = reply.json()["jobs"]
            if not jobs:
                empty += 1
                continue
            empty = 0
            for state in ("running", "finished"):
                extra = {"exit_code": 0} if state == "finished" else {}
                updates = [
                    {"job_id": j["job_id"], "pilot_id": name, "state": state, **extra} for j in jobs
                ]
                answer = c.post("/api/v1/pilot/update_jobs", json={"updates": updates}).json()
                errors += [f"{name}: {a['error']}" for a in answer if a.get("error")]
            done[name] += len(jobs)


def test_ten_pilots_race_for_a_thousand_jobs(harvester: Harvester) -> None:
    task_id = harvester.submit(
        "--containerImage", "base", "--exec", "true", "--outDS", "user.alice.race",
        "--nJobs", str(N_JOBS), "--site", "ANALY_MANUAL",
    )  # fmt: skip
    wait_for(
        lambda: (
            harvester.query(
                "SELECT count(*) FROM jobs WHERE task_id = :t AND status = 'activated'", t=task_id
            )[0][0]
            == N_JOBS
        ),
        60,
        "1,000 activated jobs",
    )
    done: Counter[str] = Counter()
    errors: list[str] = []
    pilots = [
        threading.Thread(target=_pilot, args=(harvester, f"racer-{i}", done, errors))
        for i in range(N_PILOTS)
    ]
    for p in pilots:
        p.start()
    for p in pilots:
        p.join(300)
    assert errors == []
    assert sum(done.values()) == N_JOBS
    assert len(done) == N_PILOTS  # every pilot got work: they really raced
    # the history: each job dispatched exactly once, to one pilot, and finished once
    sent = harvester.query(
        "SELECT h.entity_id, count(*), count(DISTINCT h.actor) FROM state_history h "
        "JOIN jobs j ON j.id = h.entity_id "
        "WHERE h.entity = 'job' AND h.to_status = 'sent' AND j.task_id = :t "
        "GROUP BY h.entity_id",
        t=task_id,
    )
    assert len(sent) == N_JOBS and all(n == 1 and actors == 1 for _, n, actors in sent)
    finished = harvester.query(
        "SELECT count(*), count(DISTINCT h.entity_id) FROM state_history h "
        "JOIN jobs j ON j.id = h.entity_id "
        "WHERE h.entity = 'job' AND h.to_status = 'finished' AND j.task_id = :t",
        t=task_id,
    )
    assert finished == [(N_JOBS, N_JOBS)]
    holders = harvester.query(
        "SELECT pilot_id, count(*) FROM jobs WHERE task_id = :t GROUP BY pilot_id", t=task_id
    )
    assert dict(holders) == dict(done)
    assert harvester.wait_task(task_id, 60)["status"] == "done"
