"""Bad input gets a clear message and a 4xx (or a non-zero exit), and creates nothing.

One real harvester serves the whole module; after each refusal the test
checks that the database holds no new task and the file store no new blob.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Harvester, harvester_settings, make_harvester, wait_for

MAX_UPLOAD = 4096
MAX_REQUEST = 200_000


@pytest.fixture(scope="module")
def hv(
    tmp_path_factory: pytest.TempPathFactory,
    image_cache: Path,
    module_database_env: dict[str, str],
) -> Iterator[Harvester]:
    h = make_harvester(
        tmp_path_factory.mktemp("bad"),
        image_cache,
        harvester_settings(max_workers=0),
        {
            "HPCAF_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
            "HPCAF_MAX_REQUEST_BYTES": str(MAX_REQUEST),
            "HPCAF_MAX_JOBS_PER_TASK": "500",
            **module_database_env,
        },
    )
    yield h
    h.cleanup()


def n_tasks(h: Harvester) -> int:
    return int(h.query("SELECT count(*) FROM tasks")[0][0])


def n_blobs(h: Harvester) -> int:
    store = h.home / "files"
    return sum(1 for p in store.rglob("*") if p.is_file()) if store.exists() else 0


GOOD = {"containerImage": "base", "exec": "true", "outDS": "user.alice.ok"}
FIT = {"transform": "pyhf_fit", "outputs": ["results.json"], "jobParameters": [{"patches": ["a"]}]}


def nested(depth: int) -> list[object]:
    """``[[[...]]]``: stored, it could not be serialized back (the task list would fail)."""
    value: list[object] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"outDS": "user.bob.x"}, 400, "must be 'user.alice.<name>'"),
        ({"outDS": "mc23.alice.x"}, 400, "invalid outDS"),
        ({"outDS": "user.alice.../etc"}, 400, "invalid outDS"),
        ({"containerImage": "nosuchimage"}, 400, "not in the image cache"),
        ({"exec": "   "}, 400, "exec is empty"),
        ({"nJobs": 0}, 422, "nJobs"),
        ({"nJobs": 501}, 400, "over the limit of 500"),
        ({"nJobs": 10**9}, 400, "over the limit"),
        ({"site": "ANALY_NOWHERE"}, 400, "unknown site 'ANALY_NOWHERE'"),
        ({"excludedSite": ["NOPE"]}, 400, "unknown site 'NOPE'"),
        ({"outputs": ["../escape.txt"]}, 400, "invalid output name"),
        ({"outputs": ["a/b.txt"]}, 400, "invalid output name"),
        ({"outputs": ["/etc/passwd"]}, 400, "invalid output name"),
        ({"outputs": ["x.txt", "x.txt"]}, 400, "listed twice"),
        ({"maxAttempt": 0}, 422, "maxAttempt"),
        ({"architecture": "#&voodoo"}, 400, "GPU vendor 'voodoo'"),
        ({"architecture": "{not json"}, 400, "invalid architecture JSON"),
        ({"env": {"BAD NAME": "x"}}, 422, "invalid environment variable name"),
        ({"unknownOption": 1}, 422, "unknownOption"),
        ({"taskName": "nul\x00name"}, 422, "NUL character"),
        ({"exec": "echo \x00"}, 422, "NUL character"),
        ({"transformArgs": {"k\x00": 1}}, 422, "NUL character"),
        ({"architecture": "x" * 300}, 422, "architecture"),
        ({"transformArgs": {"x": nested(500)}}, 422, "nests deeper than 32 levels"),
        ({"jobParameters": [{"x": nested(40)}]}, 422, "nests deeper than 32 levels"),
        (FIT | {"transformArgs": {"backend": "jax", "fitter": "lbfgs"}}, 400, "fitter must be"),
        (FIT | {"transformArgs": {"backend": "numpy", "fitter": "batched"}}, 400, "backend jax"),
    ],
)
def test_submit_refused(
    hv: Harvester, change: dict[str, object], status: int, message: str
) -> None:
    before = n_tasks(hv)
    with hv.api("alice") as c:
        response = c.post("/api/v1/tasks", json={**GOOD, **change})
    assert response.status_code == status, response.text
    assert message in json.dumps(response.json()["detail"])
    assert n_tasks(hv) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--outDS", "user.bob.x", "--exec", "true"], "must be 'user.alice.<name>'"),
        (["--outDS", "user.alice.x", "--exec", ""], "--exec is required"),
        (["--outDS", "user.alice.x", "--exec", "true", "--nJobs", "0"], "--nJobs must be"),
        (["--outDS", "user.alice.x", "--exec", "true", "--site", "NOPE"], "unknown site"),
        (["--outDS", "user.alice.x", "--exec", "true", "--outputs", "../x"], "invalid output"),
        (
            ["--outDS", "user.alice.x", "--exec", "true", "--containerImage", "nope"],
            "not in the image cache",
        ),
    ],
)
def test_pcontainer_refused(hv: Harvester, args: list[str], message: str) -> None:
    before = n_tasks(hv)
    if "--containerImage" not in args:
        args = ["--containerImage", "base", *args]
    result = hv.pcontainer(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert n_tasks(hv) == before


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_nan_in_a_body_is_refused(hv: Harvester, literal: bytes) -> None:
    """Python's json reads these; stored, they would fail every reply holding the task."""
    before = n_tasks(hv)
    body = json.dumps({**GOOD, "transformArgs": {"x": "HERE"}}).encode()
    with hv.api("alice") as c:
        response = c.post(
            "/api/v1/tasks",
            content=body.replace(b'"HERE"', literal),
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 422, response.text
    assert "holds NaN or an infinity" in response.text
    assert n_tasks(hv) == before


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/tasks?owner=al%00ice",
        "/api/v1/jobs?queue=ANALY%00",
        "/api/v1/tasks?name=%00*",
        "/api/v1/queues/ANALY_LOCAL%00",
    ],
)
def test_nul_in_a_parameter_is_refused(hv: Harvester, path: str) -> None:
    """PostgreSQL cannot compare text holding a NUL; both databases answer 400."""
    with hv.api("admin") as c:
        if path.startswith("/api/v1/queues/"):
            response = c.patch(path, json={"status": "offline"})
        else:
            response = c.get(path)
    assert response.status_code == 400, response.text
    assert "NUL character" in response.json()["detail"]


def test_nul_in_a_dashboard_filter_is_a_400_page(hv: Harvester) -> None:
    import httpx

    response = httpx.get(hv.url + "/?owner=al%00ice")
    assert response.status_code == 400
    assert "text/html" in response.headers["content-type"]
    assert "NUL character" in response.text


def test_a_pilot_offering_absurd_cores_is_refused(hv: Harvester) -> None:
    with hv.api("pilot") as c:
        response = c.post(
            "/api/v1/pilot/acquire_jobs",
            json={"queue": "ANALY_MANUAL", "pilot_id": "p", "cores": 2**70},
        )
    assert response.status_code == 422 and "cores" in response.text


def test_malformed_load_json(hv: Harvester, tmp_path: Path) -> None:
    broken = tmp_path / "params.json"
    broken.write_text("{'containerImage': base")
    result = hv.pcontainer("--loadJson", str(broken))
    assert result.returncode == 2 and "not valid JSON" in result.stderr
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    result = hv.pcontainer("--loadJson", str(listing))
    assert result.returncode == 2 and "expected a JSON object" in result.stderr


def test_dump_and_load_json_round_trip(hv: Harvester, tmp_path: Path) -> None:
    dumped = tmp_path / "task.json"
    result = hv.pcontainer(
        "--containerImage",
        "base",
        "--exec",
        "echo hi",
        "--outDS",
        "user.alice.dump",
        "--nJobs",
        "2",
        "--dumpJson",
        str(dumped),
        "--noSubmit",
    )
    assert result.returncode == 0 and "jediTaskID" not in result.stdout
    params = json.loads(dumped.read_text())
    assert params["exec"] == "echo hi" and params["nJobs"] == 2
    task_id = hv.submit("--loadJson", str(dumped), "--nJobs", "3")
    task = hv.task(task_id)
    assert task["n_jobs"] == 3 and task["params"]["exec"] == "echo hi"


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer hpcaf_wrong"}, {"Authorization": "Basic abc"}]
)
def test_missing_or_wrong_token(hv: Harvester, headers: dict[str, str]) -> None:
    import httpx

    for method, path in (
        ("GET", "/api/v1/tasks"),
        ("POST", "/api/v1/tasks"),
        ("GET", "/api/v1/queues"),
        ("POST", "/api/v1/pilot/acquire_jobs"),
    ):
        response = httpx.request(method, hv.url + path, headers=headers, json=GOOD)
        assert response.status_code == 401, (path, response.text)
        assert "token" in response.json()["detail"]


def test_cli_without_token(hv: Harvester) -> None:
    result = hv.cli("harvester.client.pbook", "show", user="")
    assert result.returncode == 2 and "no token" in result.stderr


def test_roles(hv: Harvester) -> None:
    with hv.api("pilot") as c:
        response = c.post("/api/v1/tasks", json=GOOD)
        assert response.status_code == 403 and "pilot token" in response.json()["detail"]
    with hv.api("alice") as c:
        response = c.post(
            "/api/v1/pilot/acquire_jobs", json={"queue": "ANALY_MANUAL", "pilot_id": "x"}
        )
        assert response.status_code == 403
        response = c.patch("/api/v1/queues/ANALY_LOCAL", json={"status": "offline"})
        assert response.status_code == 403 and "only admins" in response.json()["detail"]
    with hv.api("admin") as c:
        response = c.patch("/api/v1/queues/ANALY_MANUAL", json={"status": "test"})
        assert response.status_code == 200 and response.json()["status"] == "test"
        response = c.patch("/api/v1/queues/ANALY_MANUAL", json={"status": "online"})
        assert response.json()["status"] == "online"
        response = c.patch("/api/v1/queues/NOPE", json={"status": "online"})
        assert response.status_code == 404


def test_a_body_over_the_request_limit_is_refused(hv: Harvester) -> None:
    """Declared (Content-Length) or streamed (chunked), it is refused before it is all read."""
    before = n_tasks(hv)
    body = json.dumps({**GOOD, "transformArgs": {"blob": "x" * MAX_REQUEST}}).encode()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 16_384):
            yield body[start : start + 16_384]

    with hv.api("alice") as c:
        headers = {"Content-Type": "application/json"}
        for content in (body, chunks()):
            response = c.post("/api/v1/tasks", content=content, headers=headers)
            assert response.status_code == 413, response.text
            assert "max_request_bytes" in response.json()["detail"]
        assert c.post("/api/v1/tasks", json=GOOD).status_code == 201  # and it still serves
    assert n_tasks(hv) == before + 1


def test_upload_over_limit_stores_nothing(hv: Harvester) -> None:
    before = n_blobs(hv)
    with hv.api("alice") as c:
        response = c.post(
            "/api/v1/files", params={"name": "big.bin"}, content=b"x" * (MAX_UPLOAD + 1)
        )
        assert response.status_code == 413
        assert "over the limit" in response.json()["detail"]

        def chunks():  # no Content-Length: refused while streaming
            for _ in range(4):
                yield b"y" * 2048

        response = c.post("/api/v1/files", params={"name": "big2.bin"}, content=chunks())
        assert response.status_code == 413
        response = c.post(
            "/api/v1/files", params={"name": "ok.txt", "sha256": "0" * 64}, content=b"hello"
        )
        assert response.status_code == 400 and "checksum mismatch" in response.json()["detail"]
        response = c.post("/api/v1/files", params={"name": "../x"}, content=b"hello")
        assert response.status_code == 400
    assert n_blobs(hv) == before
    leftovers = (
        [p for p in (hv.home / "files").glob(".upload-*")] if (hv.home / "files").exists() else []
    )
    assert leftovers == []


def test_holds_answers_only_for_the_callers_own_files(hv: Harvester) -> None:
    """``HEAD /files/{sha256}`` (a client uploads only what is missing) says yes only for
    the caller's own content: another user's answers 404 like content nobody has."""
    from harvester.client.http import HarvesterClient

    content = b"alice's pallet " + hashlib.sha256(hv.home.name.encode()).digest()
    digest = hashlib.sha256(content).hexdigest()
    with HarvesterClient(hv.url, hv.tokens["alice"]) as alice:
        assert not alice.holds(digest)
        alice.upload_bytes(content, "BkgOnly.json")
        assert alice.holds(digest)
    with HarvesterClient(hv.url, hv.tokens["bob"]) as bob:
        assert not bob.holds(digest)
    with hv.api("alice") as c:
        assert c.head("/api/v1/files/not-a-digest").status_code == 400
    with hv.api("nobody") as anonymous:
        assert anonymous.head(f"/api/v1/files/{digest}").status_code == 401


def test_interrupted_upload_stores_nothing(hv: Harvester) -> None:
    """A client that dies a third of the way through an upload leaves no file, no
    partial blob and no traceback."""
    store = hv.home / "files"
    before = n_blobs(hv)
    host, port = hv.url.removeprefix("http://").split(":")
    head = (
        f"POST /api/v1/files?name=half.bin HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {hv.tokens['alice']}\r\nContent-Length: 3000\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + b"z" * 1000)
        wait_for(lambda: list(store.glob(".upload-*")), 10, "the server to receive the body")
    wait_for(lambda: not list(store.glob(".upload-*")), 10, "the partial upload to be deleted")
    assert n_blobs(hv) == before
    with hv.api("alice") as c:
        assert c.get("/api/v1/whoami").status_code == 200  # still serving
    assert "Traceback" not in hv.log_text()
    assert hv.query("SELECT count(*) FROM files WHERE name = 'half.bin'") == [(0,)]


def test_other_users_task(hv: Harvester) -> None:
    task_id = hv.submit(
        "--containerImage",
        "base",
        "--exec",
        "true",
        "--outDS",
        "user.alice.mine",
        "--site",
        "ANALY_MANUAL",
    )
    with hv.api("bob") as c:
        for path in (f"/api/v1/tasks/{task_id}/kill", f"/api/v1/tasks/{task_id}/retry"):
            response = c.post(path)
            assert response.status_code == 403, response.text
        assert c.get(f"/api/v1/tasks/{task_id}/results").status_code == 403
    assert hv.task(task_id)["status"] != "aborted"
    with hv.api("alice") as c:
        assert c.post(f"/api/v1/tasks/{task_id}/retry").status_code == 409
        assert c.get("/api/v1/tasks/999999").status_code == 404
        assert c.get("/api/v1/jobs/999999").status_code == 404
        assert c.get("/api/v1/tasks", params={"limit": 100000}).status_code == 422
        assert c.get("/api/v1/tasks", params={"status": "bogus"}).status_code == 422


@pytest.mark.database
def test_pilot_updates_checked(hv: Harvester) -> None:
    """Only the holder moves a job, only forward; a repeated final update is a no-op."""
    task_id = hv.submit(
        "--containerImage",
        "base",
        "--exec",
        "true",
        "--outDS",
        "user.alice.upd",
        "--site",
        "ANALY_MANUAL",
    )
    hv.wait_activated(task_id, 1)
    with hv.api("pilot") as c:
        jobs = c.post(
            "/api/v1/pilot/acquire_jobs",
            json={"queue": "ANALY_MANUAL", "pilot_id": "p1", "n_jobs": 5},
        ).json()["jobs"]
        mine = [j for j in jobs if j["task_id"] == task_id]
        assert len(mine) == 1
        job_id = mine[0]["job_id"]
        other = c.post(
            "/api/v1/pilot/update_job",
            json={"job_id": job_id, "pilot_id": "p2", "state": "running"},
        )
        assert other.status_code == 409 and "not held by pilot p2" in other.json()["detail"]
        done = {"job_id": job_id, "pilot_id": "p1", "state": "finished", "exit_code": 0}
        first = c.post("/api/v1/pilot/update_job", json=done)
        assert first.status_code == 200 and first.json()["changed"] is True
        again = c.post("/api/v1/pilot/update_job", json=done)
        assert again.status_code == 200 and again.json()["changed"] is False
        back = c.post(
            "/api/v1/pilot/update_job",
            json={"job_id": job_id, "pilot_id": "p1", "state": "running"},
        )
        assert back.status_code == 409
        bogus = c.post(
            "/api/v1/pilot/update_job",
            json={"job_id": job_id, "pilot_id": "p1", "state": "activated"},
        )
        assert bogus.status_code == 422
    finished = hv.query(
        "SELECT count(*) FROM state_history WHERE entity='job' AND "
        "entity_id=:j AND to_status='finished'",
        j=job_id,
    )[0][0]
    assert finished == 1
    assert hv.task(task_id)["status"] == "done"


@pytest.mark.database
def test_files_carried_in_a_final_report_are_checked(hv: Harvester) -> None:
    """Small outputs and logs travel in the final report itself: content that is not the
    declared sha256 or size, or not base64, is a 4xx that changes nothing; a good report
    stores and registers the file as an upload would, and a start carried with the end
    records the job's running state from it (kept within creation and now)."""
    task_id = hv.submit(
        "--containerImage",
        "base",
        "--exec",
        "true",
        "--outputs",
        "o.txt",
        "--outDS",
        "user.alice.carried",
        "--site",
        "ANALY_MANUAL",
    )
    hv.wait_activated(task_id, 1)
    content = b"carried in the report\n"
    good = {
        "name": "o.txt",
        "sha256": hashlib.sha256(content).hexdigest(),
        "size": len(content),
        "content_b64": base64.b64encode(content).decode(),
    }
    with hv.api("pilot") as c:
        (job,) = c.post(
            "/api/v1/pilot/acquire_jobs",
            json={"queue": "ANALY_MANUAL", "pilot_id": "p1", "n_jobs": 1},
        ).json()["jobs"]
        report = {"job_id": job["job_id"], "pilot_id": "p1", "state": "finished", "exit_code": 0}
        bad_outputs = [
            ({**good, "sha256": "0" * 64}, 400, "checksum mismatch"),
            ({**good, "size": len(content) + 1}, 400, "carried 22 bytes"),
            ({**good, "content_b64": "not base64!"}, 400, "is not base64"),
            ({**good, "content_b64": "A" * 100_000}, 422, "content_b64"),
        ]
        for output, status, words in bad_outputs:
            refused = c.post("/api/v1/pilot/update_job", json={**report, "outputs": [output]})
            assert refused.status_code == status, refused.text
            assert words in refused.text
        assert hv.query("SELECT status FROM jobs WHERE id=:j", j=job["job_id"]) == [("sent",)]
        assert not hv.query("SELECT id FROM files WHERE sha256=:s", s="0" * 64)
        started = "2100-01-01T00:00:00+00:00"  # a pilot clock ahead: kept at the server's now
        accepted = c.post(
            "/api/v1/pilot/update_job",
            json={**report, "outputs": [good], "started_at": started},
        )
        assert accepted.status_code == 200 and accepted.json()["changed"] is True
    moves = hv.query(
        "SELECT from_status, to_status, reason FROM state_history WHERE entity='job' AND "
        "entity_id=:j ORDER BY id",
        j=job["job_id"],
    )
    assert [(a, b) for a, b, _ in moves][-2:] == [("sent", "running"), ("running", "finished")]
    assert "reported by pilot with its end" in moves[-2][2]
    ((began, ended),) = hv.query(
        "SELECT started_at, ended_at FROM jobs WHERE id=:j", j=job["job_id"]
    )
    assert began is not None and str(began) <= str(ended) and not str(began).startswith("2100")
    with hv.api("alice") as c:
        assert c.get(f"/api/v1/files/{good['sha256']}").content == content


def test_inputs_carried_in_a_submission_are_checked_stored_and_not_kept_in_the_task(
    hv: Harvester,
) -> None:
    """A small input may come inside ``POST /tasks`` (as ``hpcaf.Executor`` sends its
    calls): content that is not its sha256, or not base64, is a 400 that stores no task;
    good content is registered as the owner's input and never copied into the task."""
    content = b"a batch of calls\n"
    carried = {
        "name": "calls.pkl",
        "sha256": hashlib.sha256(content).hexdigest(),
        "content_b64": base64.b64encode(content).decode(),
    }
    task = {
        "containerImage": "base",
        "exec": "cat calls.pkl > o.txt",
        "outputs": ["o.txt"],
        "outDS": "user.alice.carried_in",
        "site": "ANALY_MANUAL",
    }
    tasks_before = hv.query("SELECT count(*) FROM tasks")[0][0]
    with hv.api("alice") as c:
        for item, words in (
            ({**carried, "sha256": "1" * 64}, "checksum mismatch"),
            ({**carried, "content_b64": "%%%"}, "is not base64"),
        ):
            refused = c.post("/api/v1/tasks", json={**task, "inputs": [item]})
            assert refused.status_code == 400 and words in refused.text, refused.text
        assert hv.query("SELECT count(*) FROM tasks")[0][0] == tasks_before
        checked = c.post("/api/v1/tasks/check", json={**task, "inputs": [carried]})
        assert checked.status_code == 200, checked.text
        assert c.get(f"/api/v1/files/{carried['sha256']}").status_code == 404, "a dry run"
        submitted = c.post("/api/v1/tasks", json={**task, "inputs": [carried]})
        assert submitted.status_code == 201, submitted.text
        task_id = submitted.json()["jediTaskID"]
        assert c.get(f"/api/v1/files/{carried['sha256']}").content == content
    owners = hv.query("SELECT owner, kind FROM files WHERE sha256=:s", s=carried["sha256"])
    assert [(o, str(k).lower()) for o, k in owners] == [("alice", "input")]
    with hv.api("bob") as c:
        assert c.get(f"/api/v1/files/{carried['sha256']}").status_code == 403
    stored = json.dumps(hv.task(task_id)) + str(
        hv.query("SELECT params FROM tasks WHERE id=:t", t=task_id)
    )
    assert "content_b64" not in stored and carried["content_b64"] not in stored
    assert carried["sha256"] in stored


def test_a_submission_names_only_files_its_owner_holds(hv: Harvester) -> None:
    """Knowing a checksum is not holding the file: Bob cannot submit a task whose input
    names the sha256 of a file only Alice uploaded (it would run with her content). The
    refusal is a 400 that stores no task and does not say whether anyone holds it; once
    Bob uploads the same content himself, the same submission is taken."""
    content = b"alice's private calibration\n"
    digest = hashlib.sha256(content).hexdigest()
    with hv.api("alice") as c:
        uploaded = c.post("/api/v1/files", params={"name": "calib.txt"}, content=content)
        assert uploaded.status_code in (200, 201), uploaded.text
    task = {
        "containerImage": "base",
        "exec": "cat calib.txt > o.txt",
        "inputs": [{"name": "calib.txt", "sha256": digest}],
        "outputs": ["o.txt"],
        "outDS": "user.bob.borrowed",
        "site": "ANALY_MANUAL",
    }
    tasks_before = hv.query("SELECT count(*) FROM tasks")[0][0]
    with hv.api("bob") as c:
        for path in ("/api/v1/tasks/check", "/api/v1/tasks"):
            refused = c.post(path, json=task)
            assert refused.status_code == 400, refused.text
            assert f"you hold no file with sha256 {digest}" in refused.json()["detail"]
        assert hv.query("SELECT count(*) FROM tasks")[0][0] == tasks_before
        own = c.post("/api/v1/files", params={"name": "calib.txt"}, content=content)
        assert own.status_code in (200, 201), own.text
        taken = c.post("/api/v1/tasks", json=task)
        assert taken.status_code == 201, taken.text
    owners = hv.query("SELECT owner FROM files WHERE sha256=:s ORDER BY owner", s=digest)
    assert [o for (o,) in owners] == ["alice", "bob"]
