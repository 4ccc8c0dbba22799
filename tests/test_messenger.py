"""The shared-filesystem messenger: pilots on compute nodes without a network.

The pilot of the end-to-end test runs in a network namespace of its own, with no
interface but a loopback, and with the harvester's home (database, file store)
hidden under an empty tmpfs: all it shares with the harvester is the messenger
folder and the site's image cache, as on a compute node of Titan or Summit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harvester.config import parse_queues
from harvester.errors import ConfigError
from pilot import messenger as pilot_messenger
from pilot.link import ServerError
from pilot.messenger import SharedFsLink
from protocol.messenger import PILOTS, REPLIES, REQUESTS, TAKEN, Reply, write_whole
from tests.helpers import Harvester, harvester_settings, process_running, wait_for

NONET_QUEUE = """
[queues.ANALY_NONET]
provider = "local"
cores = 1
memory_mb = 2000
maxWalltime = 600
maxWorkers = {max_workers}
messenger = "shared_fs"
messenger_dir = {folder}
"""


NO_NETWORK = ["--net", "--mount", "--propagation", "private"]
"""``unshare`` options: a network namespace (a loopback, down) and a private mount table."""


def nonet_settings(folder: Path, max_workers: int = 0) -> str:
    return harvester_settings(
        NONET_QUEUE.format(max_workers=max_workers, folder=json.dumps(str(folder)))
    )


# -- configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"messenger": "shared_fs"}, "needs messenger_dir"),
        ({"messenger": "shared_fs", "messenger_dir": "relative/dir"}, "absolute path"),
        ({"messenger_dir": "/srv/messenger"}, 'messenger is not "shared_fs"'),
        ({"messenger": "pigeon"}, "field messenger"),
    ],
)
def test_bad_messenger_settings_name_the_queue(table: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_queues({"queues": {"ANALY_X": {"provider": "local", **table}}})
    assert "queue ANALY_X" in str(err.value) and expected in str(err.value)


# -- the handshake, without a relay --------------------------------------------------


def test_unanswered_call_is_withdrawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody claims the call: it is withdrawn (never handled late) and fails as an
    unreachable server does, without a status."""
    monkeypatch.setattr(pilot_messenger, "ANSWER_WAIT_S", 0.3)
    link = SharedFsLink(tmp_path, "token", "node:1:abc")
    with pytest.raises(ServerError) as err:
        link.heartbeat({})
    assert err.value.status_code is None and "no answer" in str(err.value)
    assert list((link.mailbox / REQUESTS).iterdir()) == [], "the request was withdrawn"


def test_claimed_call_is_waited_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call the relay claimed before the pilot's wait ran out cannot be withdrawn: the
    pilot waits on for its answer, which arrives after that wait (a relay restarting)."""
    monkeypatch.setattr(pilot_messenger, "ANSWER_WAIT_S", 0.5)
    link = SharedFsLink(tmp_path, "token", "node:1:abc")
    claimed_at: list[float] = []

    def slow_relay() -> None:
        request = wait_for(
            lambda: next((link.mailbox / REQUESTS).glob("*.json"), None), 5, "a request"
        )
        os.replace(request, link.mailbox / TAKEN / request.name)
        claimed_at.append(time.monotonic())
        time.sleep(1.5)  # past the pilot's wait of 0.5 s
        reply = Reply(status=200, body={"commands": {"7": "tobekilled"}})
        write_whole(link.mailbox / REPLIES / request.name, reply.model_dump_json().encode())

    relay = threading.Thread(target=slow_relay)
    began = time.monotonic()
    relay.start()
    commands = link.heartbeat({"pilot_id": "p", "job_ids": [7]})
    relay.join()
    assert commands == {"7": "tobekilled"}
    assert claimed_at[0] - began < 0.5, "claimed within the pilot's wait"
    assert time.monotonic() - began > 1.5, "answered after it: the pilot waited on"
    link.close()
    assert not link.mailbox.exists()


def test_missing_messenger_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="does not exist"):
        SharedFsLink(tmp_path / "not-mounted", "token", "p")


# -- end to end, through the relay ---------------------------------------------------


def test_provider_started_pilots_use_the_messenger(
    harvester_factory: Callable[..., Harvester], tmp_path: Path
) -> None:
    """A queue with ``messenger = "shared_fs"``: the submitter starts its pilots with the
    folder instead of a URL, and a task with outputs runs to done through the relay."""
    folder = tmp_path / "messenger"
    harvester = harvester_factory(nonet_settings(folder, max_workers=1))
    task_id = harvester.submit(
        "--containerImage",
        "base",
        "--exec",
        "echo relayed > out.txt",
        "--outputs",
        "out.txt",
        "--outDS",
        "user.alice.messenger",
        "--site",
        "ANALY_NONET",
    )
    assert harvester.wait_task(task_id, 120)["status"] == "done"
    scripts = list((harvester.home / "workers").rglob("pilot.sh"))
    assert scripts and all(
        "--messenger-dir" in s.read_text() and "--server" not in s.read_text() for s in scripts
    )
    (sha,) = (r[0] for r in harvester.query("SELECT sha256 FROM files WHERE kind='output'"))
    with harvester.api() as client:
        assert client.get(f"/api/v1/files/{sha}").content == b"relayed\n"


def _no_network_pilot(harvester: Harvester, folder: Path, log: Path) -> subprocess.Popen[bytes]:
    """A pilot in a network namespace with only a loopback (down), the harvester's home
    hidden: it can reach the messenger folder and the image cache, nothing else."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.fail("the no-network pilot needs root and unshare (util-linux)")
    pilot = [
        sys.executable,
        "-m",
        "pilot.main",
        "--messenger-dir",
        str(folder),
        "--queue",
        "ANALY_NONET",
        "--max-idle",
        "600",
        "--poll",
        "0.3",
        "--poll-max",
        "1",
        "--heartbeat",
        "1",
    ]
    script = 'mount -t tmpfs hidden "$1" && shift && exec "$@"'
    env = {**harvester.env, "HPCAF_TOKEN": harvester.tokens["pilot"]}
    env.pop("HPCAF_HOME", None)
    return subprocess.Popen(
        [unshare, *NO_NETWORK, "sh", "-c", script, "sh", str(harvester.home), *pilot],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _connect_from(pid: int, port: int) -> str:
    """Try the harvester's port from inside ``pid``'s network namespace: the error."""
    probe = (
        "import socket,sys\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
        "else:\n"
        "    print('CONNECTED')\n"
    )
    proc = subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return proc.stdout + proc.stderr


def test_pilot_without_network_runs_tasks_through_the_shared_folder(
    harvester_factory: Callable[..., Harvester], tmp_path: Path
) -> None:
    folder = tmp_path / "messenger"
    harvester = harvester_factory(nonet_settings(folder))
    log = tmp_path / "nonet-pilot.log"
    pilot = _no_network_pilot(harvester, folder, log)
    harvester.pilots.append(pilot)
    port = int(harvester.env["HPCAF_PORT"])

    # the pilot's network: its own namespace, where the harvester cannot be reached at all
    wait_for(lambda: list((folder / PILOTS).glob("*")), 30, "the pilot's mailbox")
    assert os.readlink(f"/proc/{pilot.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    with socket.create_connection(("127.0.0.1", port), timeout=3):
        pass  # from here, the harvester answers
    refused = _connect_from(pilot.pid, port)
    assert "CONNECTED" not in refused and "Error" in refused, refused

    # a task with outputs, to done
    task_id = harvester.submit(
        "--containerImage",
        "base",
        "--exec",
        "echo $HPCAF_JOB_INDEX > i.txt",
        "--outputs",
        "i.txt",
        "--outDS",
        "user.alice.nonet",
        "--nJobs",
        "2",
        "--site",
        "ANALY_NONET",
    )
    assert harvester.wait_task(task_id, 120)["status"] == "done", log.read_text()[-3000:]
    contents = set()
    with harvester.api() as client:
        for (sha,) in harvester.query("SELECT sha256 FROM files WHERE kind='output'"):
            contents.add(client.get(f"/api/v1/files/{sha}").content)
    assert contents == {b"0\n", b"1\n"}

    # what is not a request, dropped into the pilot's mailbox: skipped, logged once
    (mailbox,) = (folder / PILOTS).iterdir()
    (mailbox / REQUESTS / "notes.json").write_text("{}")
    (mailbox / REQUESTS / "99999999.json").write_text('{"kind": "update_job", "tok')
    time.sleep(2)  # twenty scans of the relay
    assert harvester.log_text().count("99999999.json, not a readable request") == 1
    assert harvester.log_text().count("notes.json, not a readable request") == 1
    assert harvester.proc is not None and harvester.proc.poll() is None

    # a kill arriving mid-job, heard through the heartbeat's reply
    killed = harvester.submit(
        "--containerImage",
        "base",
        "--exec",
        "sleep 307",
        "--outDS",
        "user.alice.nonet-kill",
        "--site",
        "ANALY_NONET",
    )
    wait_for(lambda: harvester.job_status(killed) == "running", 60, "the job to run")
    assert harvester.pbook("kill", str(killed)).returncode == 0
    wait_for(lambda: not process_running("sleep 307"), 30, "the payload to be stopped")
    assert harvester.jobs(killed)[0]["status"] == "cancelled"
    assert "is to be killed" in log.read_text()

    # a harvester restart while a job runs: the pilot's calls wait in the folder
    restarted = harvester.submit(
        "--containerImage",
        "base",
        "--exec",
        "sleep 4; echo after > r.txt",
        "--outputs",
        "r.txt",
        "--outDS",
        "user.alice.nonet-restart",
        "--site",
        "ANALY_NONET",
    )
    wait_for(lambda: harvester.job_status(restarted) == "running", 60, "the job to run")
    harvester.stop(signal.SIGKILL)
    time.sleep(6)  # the job ends meanwhile: its report waits in the shared folder
    assert list((mailbox / REQUESTS).glob("0*.json")), "the report waits for the relay"
    harvester.start()
    assert harvester.wait_task(restarted, 120)["status"] == "done", log.read_text()[-3000:]
    (job,) = harvester.jobs(restarted)
    assert job["status"] == "finished" and job["attempt_nr"] == 1, "reported once, not retried"
    assert pilot.poll() is None, "the pilot lived through the restart"


# -- the relay in this process: claims left by a restart, refusals, files ------------


@pytest.fixture
def relay_site(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A harvester context on the test's database with one shared-filesystem queue, its
    relay (driven by the test, one scan at a time), and a pilot and a user token."""
    from harvester.agents.relay import MessengerRelay
    from harvester.assembly import build_context
    from harvester.settings import HarvesterSettings

    for key in [k for k in os.environ if k.startswith("HPCAF_")]:
        monkeypatch.delenv(key)
    folder = tmp_path / "messenger"
    settings = HarvesterSettings(home=tmp_path / "home", database_url=database_url)
    queue = {"provider": "local", "maxWorkers": 0, "messenger": "shared_fs"}
    ctx = build_context(
        settings, {"queues": {"ANALY_NONET": {**queue, "messenger_dir": str(folder)}}}
    )
    from db.models import Role
    from harvester.services.tokens import create_token

    with ctx.sessions.begin() as session:
        tokens = {
            "pilot": create_token(session, "harvester", Role.PILOT),
            "user": create_token(session, "alice", Role.USER),
        }
    relay = MessengerRelay(ctx, [folder])
    relay.run_once()  # makes the folder, as the harvester does when it starts
    yield ctx, relay, folder, tokens
    relay.stop()
    ctx.engine.dispose()


def _scanning(relay: Any) -> Callable[[], None]:
    """Scan in the background until the returned function is called."""
    stop = threading.Event()

    def scan() -> None:
        while not stop.is_set():
            relay.run_once()
            time.sleep(0.02)

    thread = threading.Thread(target=scan, daemon=True)
    thread.start()
    return lambda: (stop.set(), thread.join())  # type: ignore[func-returns-value]


def test_relay_refuses_what_http_refuses(relay_site: Any) -> None:
    """A bad token is a 401, a user's token a 403, a bad body a 422: answered, not fatal."""
    _ctx, relay, folder, tokens = relay_site
    stop = _scanning(relay)
    try:
        for token, expected in (("hpcaf_not-a-token", 401), (tokens["user"], 403)):
            link = SharedFsLink(folder, token, "node:1:x")
            with pytest.raises(ServerError) as err:
                link.worker_node({"pilot_id": "p", "node": "n"})
            assert err.value.status_code == expected, err.value
        link = SharedFsLink(folder, tokens["pilot"], "node:1:x")
        with pytest.raises(ServerError) as err:
            link.update_job({"job_id": -4, "pilot_id": "p", "state": "running"})
        assert err.value.status_code == 422 and "job_id" in str(err.value)
        link.worker_node({"pilot_id": "p", "node": "n", "cores": 2})  # a good call still works
    finally:
        stop()


def test_relay_carries_files_both_ways(relay_site: Any, tmp_path: Path) -> None:
    ctx, relay, folder, tokens = relay_site
    link = SharedFsLink(folder, tokens["pilot"], "node:1:x")
    payload = tmp_path / "out.root"
    payload.write_bytes(os.urandom(3 << 20))  # larger than any request may be
    stop = _scanning(relay)
    try:
        stored = link.upload(payload, "out.root")
        assert ctx.files.path(stored["sha256"]).read_bytes() == payload.read_bytes()
        back = tmp_path / "back.root"
        link.download(stored["sha256"], back)
        assert back.read_bytes() == payload.read_bytes()
        with pytest.raises(ServerError) as err:
            link.download("0" * 64, tmp_path / "missing")
        assert err.value.status_code == 404
    finally:
        stop()
    left = [p.name for f in ("outgoing", "incoming", "taken") for p in (link.mailbox / f).iterdir()]
    assert left == [], "every file handed over was taken up"


def test_relay_answers_calls_it_claimed_before_a_restart(relay_site: Any) -> None:
    """A call claimed (in ``taken/``) when the harvester stopped is answered by the next
    relay once the claim is stale, and not while another relay may still hold it."""
    from harvester.agents.relay import STALE_CLAIM_S, MessengerRelay

    ctx, relay, folder, tokens = relay_site
    mailbox = folder / PILOTS / "node_1.abcd"
    for sub in ("requests", "taken", "replies", "outgoing", "incoming"):
        (mailbox / sub).mkdir(parents=True)
    call = {"kind": "worker_node", "token": tokens["pilot"], "body": {"pilot_id": "p", "node": "n"}}
    claimed = mailbox / TAKEN / "00000001.json"
    write_whole(claimed, json.dumps(call).encode())
    relay.run_once()  # a fresh claim is another relay's, alive: not this one's to redo
    restarted = MessengerRelay(ctx, [folder])
    restarted.run_once()
    time.sleep(0.3)
    assert not (mailbox / REPLIES / "00000001.json").exists(), "handled twice"
    # the relay that claimed it stopped: nobody touches the claim any more
    stale = time.time() - STALE_CLAIM_S - 1
    os.utime(claimed, (stale, stale))
    restarted.run_once()
    reply = wait_for(
        lambda: (
            (mailbox / REPLIES / "00000001.json").exists()
            and Reply.model_validate_json((mailbox / REPLIES / "00000001.json").read_bytes())
        ),
        10,
        "the answer",
    )
    assert reply.status == 204
    assert not (mailbox / TAKEN / "00000001.json").exists()
    restarted.stop()


def test_the_relay_follows_no_link_and_shares_nothing(relay_site: Any, tmp_path: Path) -> None:
    """A mailbox's files are the site account's alone (the requests carry the pilots'
    token), and an upload whose file is a link to a harvester file is refused, not read."""
    ctx, relay, folder, tokens = relay_site
    link = SharedFsLink(folder, tokens["pilot"], "node:1:x")
    secret = tmp_path / "home" / "secret.txt"
    secret.write_text("the harvester's own file")
    stop = _scanning(relay)
    try:
        link.worker_node({"pilot_id": "p", "node": "n"})
        for path in [link.mailbox, *link.mailbox.iterdir()]:
            assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
        # a request whose data file is a symlink to a file of the harvester's
        outgoing = link.mailbox / "outgoing" / "00000099.data"
        outgoing.symlink_to(secret)
        sha = hashlib.sha256(secret.read_bytes()).hexdigest()
        request = {"kind": "upload", "token": tokens["pilot"], "body": {"name": "x", "sha256": sha}}
        write_whole(link.mailbox / REQUESTS / "00000099.json", json.dumps(request).encode())
        answer = wait_for(
            lambda: (
                (link.mailbox / REPLIES / "00000099.json").exists()
                and Reply.model_validate_json(
                    (link.mailbox / REPLIES / "00000099.json").read_bytes()
                )
            ),
            10,
            "the answer",
        )
        assert answer.status == 400 and "00000099.data" in (answer.detail or "")
        assert not ctx.files.exists(sha), "the linked file was not stored"
    finally:
        stop()
