"""Bulk update_jobs against a real harvester: the set-based path, the careful path, errors.

The test acts as a pilot of ANALY_MANUAL (a queue the harvester provisions no
workers for) over HTTP.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import pytest

from tests.helpers import Harvester

pytestmark = pytest.mark.e2e


def acquire(h: Harvester, pilot_id: str, n: int) -> list[dict[str, Any]]:
    with h.api("pilot") as c:
        reply = c.post(
            "/api/v1/pilot/acquire_jobs",
            json={"queue": "ANALY_MANUAL", "pilot_id": pilot_id, "n_jobs": n},
        )
        assert reply.status_code == 200, reply.text
        jobs: list[dict[str, Any]] = reply.json()["jobs"]
        return jobs


def bulk(h: Harvester, updates: list[dict[str, Any]], user: str = "pilot") -> Any:
    with h.api(user) as c:
        return c.post("/api/v1/pilot/update_jobs", json={"updates": updates})


def upload(h: Harvester, content: bytes, name: str) -> dict[str, Any]:
    with h.api("pilot") as c:
        reply = c.post("/api/v1/files", params={"name": name}, content=content)
        assert reply.status_code in (200, 201), reply.text
        return {"name": name, "sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}


@pytest.mark.database
def test_bulk_reports_finish_a_task_once(harvester: Harvester) -> None:
    task_id = harvester.submit(
        "--containerImage",
        "base",
        "--exec",
        "true",
        "--outDS",
        "user.alice.bulk",
        "--outputs",
        "out.txt",
        "--nJobs",
        "6",
        "--site",
        "ANALY_MANUAL",
        "--maxAttempt",
        "2",
    )
    harvester.wait_activated(task_id, 6)
    mine = acquire(harvester, "pilot-a", 5)
    other = acquire(harvester, "pilot-b", 1)
    assert len(mine) == 5 and len(other) == 1

    running = bulk(
        harvester,
        [{"job_id": j["job_id"], "pilot_id": "pilot-a", "state": "running"} for j in mine],
    )
    assert running.status_code == 200, running.text
    assert [(r["status"], r["changed"]) for r in running.json()] == [("running", True)] * 5
    assert harvester.task(task_id)["status"] == "running"

    outputs = [upload(harvester, f"output {j['job_index']}\n".encode(), "out.txt") for j in mine]
    updates = [
        {
            "job_id": j["job_id"],
            "pilot_id": "pilot-a",
            "state": "finished",
            "exit_code": 0,
            "outputs": [out],
        }
        for j, out in zip(mine[:3], outputs[:3], strict=True)
    ]
    updates.append(  # a failure: the careful path retries it
        {
            "job_id": mine[3]["job_id"],
            "pilot_id": "pilot-a",
            "state": "failed",
            "pilot_error_code": 1305,
            "pilot_error_diag": "exit 1",
        }
    )
    updates.append(  # not this pilot's job: an error item, the others still apply
        {
            "job_id": other[0]["job_id"],
            "pilot_id": "pilot-a",
            "state": "finished",
            "outputs": [outputs[4]],
        }
    )
    updates.append(  # finished without its declared output: refused, nothing registered
        {"job_id": mine[4]["job_id"], "pilot_id": "pilot-a", "state": "finished", "outputs": []}
    )
    reply = bulk(harvester, updates)
    assert reply.status_code == 200, reply.text
    items = reply.json()
    assert [i["status"] for i in items[:3]] == ["finished"] * 3
    assert all(i["changed"] and i["error"] is None for i in items[:3])
    assert items[3]["status"] == "closed", "retried as a new attempt"
    assert items[4]["status_code"] == 409 and "not held by pilot pilot-a" in items[4]["error"]
    assert items[5]["status_code"] == 400 and "out.txt" in items[5]["error"]

    again = bulk(harvester, updates[:3])  # a retried bulk report after a lost reply
    assert [(i["status"], i["changed"]) for i in again.json()] == [("finished", False)] * 3

    files = harvester.query(
        "SELECT job_id, count(*) FROM files WHERE task_id = :t AND kind = 'output' GROUP BY job_id",
        t=task_id,
    )
    assert sorted(files) == sorted((j["job_id"], 1) for j in mine[:3]), "one output per finish"
    history = harvester.query(
        "SELECT entity_id, to_status FROM state_history WHERE entity = 'job' AND "
        "to_status = 'finished'"
    )
    assert Counter(e for e, _ in history) == {j["job_id"]: 1 for j in mine[:3]}


def test_bulk_update_bad_input(harvester: Harvester) -> None:
    update = {"job_id": 1, "pilot_id": "p", "state": "running"}
    assert bulk(harvester, [update, update]).status_code == 400
    assert "at most once" in bulk(harvester, [update, update]).text
    assert bulk(harvester, []).status_code == 422
    assert bulk(harvester, [update] * 1001).status_code == 422
    assert bulk(harvester, [update], user="alice").status_code == 403
    missing = bulk(harvester, [{"job_id": 999999, "pilot_id": "p", "state": "running"}])
    assert missing.status_code == 200 and missing.json()[0]["status_code"] == 404
