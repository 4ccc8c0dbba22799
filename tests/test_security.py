"""Tokens: revocation reaches a running API process, secrets stay out of logs and the
database, and the memory that spares idle polls the database never hides new work.
(Roles, ownership and uploads are in test_bad_input.py.)"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import Harvester, database_dump, wait_for

ACQUIRE = "/api/v1/pilot/acquire_jobs"


def test_a_revoked_token_stops_working_within_the_cache_lifetime(
    harvester_factory: Callable[..., Harvester],
) -> None:
    hv = harvester_factory(HPCAF_TOKEN_CACHE_S="1")
    with hv.api("bob") as c:
        assert c.get("/api/v1/whoami").json()["user"] == "bob"  # now remembered
        revoked = subprocess.run(
            [sys.executable, "-m", "harvester.cli", "token", "revoke", "bob"],
            env=hv.env,
            capture_output=True,
            text=True,
        )
        assert revoked.returncode == 0, revoked.stderr
        assert "revoked 1 token(s) of bob" in revoked.stdout
        start = time.monotonic()
        wait_for(lambda: c.get("/api/v1/whoami").status_code == 401, timeout=5, what="a 401")
        assert time.monotonic() - start < 2.5
        response = c.get("/api/v1/tasks")
        assert response.status_code == 401
        assert "invalid or revoked token" in response.json()["detail"]
    with hv.api("alice") as c:  # the other users' tokens are untouched
        assert c.get("/api/v1/whoami").status_code == 200


def test_tokens_are_stored_hashed_and_never_logged(harvester: Harvester) -> None:
    with harvester.api("alice") as c:
        assert c.get("/api/v1/whoami").status_code == 200
        c.get("/api/v1/tasks/123456")  # a 404, logged or not
    with harvester.api("pilot") as c:
        c.post(ACQUIRE, json={"queue": "ANALY_MANUAL", "pilot_id": "p"})
    harvester.stop()
    secrets = [harvester.tokens[u] for u in ("alice", "bob", "admin", "pilot")]
    logs = harvester.log_text()
    for path in harvester.home.rglob("*.log"):
        logs += path.read_text(errors="replace")
    stored = [row[0] for row in harvester.query("SELECT token_hash FROM tokens")]
    dump = database_dump(harvester.database_url)
    assert len(stored) >= 4 and all(len(h) == 64 for h in stored)
    for secret in secrets:
        assert secret not in logs
        assert secret not in dump


def test_an_idle_queue_remembered_does_not_hide_new_jobs(harvester: Harvester) -> None:
    """Polls of an empty queue are answered from memory; a task submitted afterwards is
    handed out at once (the brokerage of this process forgets the queue's emptiness)."""
    poll = {"queue": "ANALY_MANUAL", "pilot_id": "waiting-pilot", "n_jobs": 1}
    with harvester.api("pilot") as pilot:
        for _ in range(3):
            assert pilot.post(ACQUIRE, json=poll).json() == {"jobs": []}
        metrics = pilot.get("/metrics").text
        assert 'hpcaf_idle_polls_total{queue="ANALY_MANUAL"}' in metrics
        task_id = harvester.submit(
            "--containerImage", "base", "--exec", "true", "--outDS", "user.alice.idle",
            "--site", "ANALY_MANUAL",
        )  # fmt: skip
        jobs = wait_for(
            lambda: pilot.post(ACQUIRE, json=poll).json()["jobs"],
            timeout=15,
            what="the new job to be handed out",
            interval=0.1,
        )
        assert [j["task_id"] for j in jobs] == [task_id]


def test_outputs_cannot_point_outside_the_work_dir(tmp_path: Path) -> None:
    """A payload that links an output to a host file, or names one outside its work dir,
    gets a stage-out failure; nothing outside is read."""
    from pilot.stage import StageError, collect_output
    from protocol.error_codes import PilotErrorCode

    host_file = tmp_path / "host-secret.txt"
    host_file.write_text("do not upload me")
    workdir = tmp_path / "job"
    workdir.mkdir()
    (workdir / "out.txt").symlink_to(host_file)
    (workdir / "sub").mkdir()
    (workdir / "ok.txt").write_text("fine")
    assert collect_output(workdir, "ok.txt") == workdir / "ok.txt"
    for name, message in (
        ("out.txt", "is a symlink"),
        ("../host-secret.txt", "invalid output name"),
        ("/etc/passwd", "invalid output name"),
        ("sub", "not a regular file"),
        ("missing.txt", "not produced"),
    ):
        with pytest.raises(StageError) as caught:
            collect_output(workdir, name)
        assert caught.value.code is PilotErrorCode.STAGEOUT_FAILED
        assert message in str(caught.value)


def test_a_shared_task_can_be_read_but_not_changed(harvester: Harvester) -> None:
    """Bob cannot read Alice's logs, outputs or results until she shares the task with
    him (pbook share); then he can read them, still not kill or retry it, and cannot
    after she revokes it."""
    task_id = harvester.submit(
        "--containerImage", "base", "--exec", "echo secret > out.txt",
        "--outputs", "out.txt", "--outDS", "user.alice.shared",
    )  # fmt: skip
    assert harvester.wait_task(task_id)["status"] == "done"
    job_id = harvester.jobs(task_id)[0]["id"]
    with harvester.api("alice") as c:
        output = c.get(f"/api/v1/tasks/{task_id}/files", params={"kind": "output"}).json()[0]
    reads = [
        f"/api/v1/jobs/{job_id}/log",
        f"/api/v1/tasks/{task_id}/files",
        f"/api/v1/tasks/{task_id}/results",
        f"/api/v1/files/{output['sha256']}",
    ]

    def statuses(user: str) -> list[int]:
        with harvester.api(user) as c:
            return [c.get(path).status_code for path in reads]

    assert statuses("bob") == [403] * 4
    with harvester.api("bob") as c:
        refused = c.patch(f"/api/v1/tasks/{task_id}/readers", json={"add": ["bob"]})
        assert refused.status_code == 403 and "belongs to alice" in refused.json()["detail"]

    shared = harvester.pbook("share", str(task_id), "bob")
    assert shared.returncode == 0 and f"task {task_id} is shared with bob" in shared.stdout
    assert statuses("bob") == [200] * 4
    with harvester.api("bob") as c:
        assert c.get(reads[3]).content == b"secret\n"
        assert c.post(f"/api/v1/tasks/{task_id}/retry").status_code == 403
        assert c.post(f"/api/v1/tasks/{task_id}/kill").status_code == 403
    with harvester.api("pilot") as c:
        assert [c.get(path).status_code for path in reads[:3]] == [403] * 3
    assert harvester.task(task_id)["readers"] == ["bob"]

    revoked = harvester.pbook("share", str(task_id), "bob", "--revoke")
    assert revoked.returncode == 0 and "shared with nobody" in revoked.stdout
    assert statuses("bob") == [403] * 4

    with harvester.api("alice") as c:
        bad = c.patch(f"/api/v1/tasks/{task_id}/readers", json={"add": ["Not A User"]})
        assert bad.status_code == 400 and "invalid user name" in bad.json()["detail"]
        unknown_field = c.patch(f"/api/v1/tasks/{task_id}/readers", json={"grant": ["bob"]})
        assert unknown_field.status_code == 422
    assert harvester.task(task_id)["readers"] == []
