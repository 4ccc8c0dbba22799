"""The user clients ride through a harvester restart, and never submit a task twice."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from harvester.client.http import ClientError, HarvesterClient
from tests.helpers import Harvester, wait_for


class ClosingServer:
    """A loopback server that reads each request and hangs up without answering: a
    harvester (or proxy) that died after the request arrived. Built here because a
    real server cannot be made to fail at exactly that moment."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.requests = 0
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if conn.recv(65536):
                    self.requests += 1


@pytest.fixture
def closing_server() -> Iterator[ClosingServer]:
    server = ClosingServer()
    yield server
    server.sock.close()


def test_a_read_is_tried_again_but_a_submission_that_arrived_is_not(
    closing_server: ClosingServer,
) -> None:
    client = HarvesterClient(closing_server.url, token="t", timeout_s=5, retry_s=3)
    with pytest.raises(ClientError, match="cannot reach"):
        client.get("/api/v1/tasks/1")
    reads = closing_server.requests
    assert reads >= 3, "a read is harmless to repeat: tried again until the window closed"
    with pytest.raises(ClientError, match="cannot reach"):
        client.submit_task({"exec": "true"})
    assert closing_server.requests == reads + 1, "the submission may have been taken: once"


def test_nothing_listening_is_tried_again_then_said(unused_port: int) -> None:
    started = time.monotonic()
    client = HarvesterClient(f"http://127.0.0.1:{unused_port}", token="t", retry_s=2)
    with pytest.raises(
        ClientError, match=f"cannot reach the harvester at http://127.0.0.1:{unused_port}"
    ):
        client.submit_task({"exec": "true"})  # never arrived: safe to send again
    assert 2 <= time.monotonic() - started < 20
    off = HarvesterClient(f"http://127.0.0.1:{unused_port}", token="t", retry_s=0)
    started = time.monotonic()
    with pytest.raises(ClientError):
        off.get("/api/v1/tasks")
    assert time.monotonic() - started < 2, "HPCAF_CLIENT_RETRY_S=0: no retries"


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.e2e
def test_pbook_wait_rides_through_a_harvester_restart(harvester: Harvester) -> None:
    task_id = harvester.submit(
        "--site", "ANALY_MANUAL", "--containerImage", "base", "--exec", "true",
        "--outDS", "user.alice.restart",
    )  # fmt: skip
    env = {**harvester.env, "HPCAF_URL": harvester.url, "HPCAF_TOKEN": harvester.tokens["alice"]}
    waiting = subprocess.Popen(
        [sys.executable, "-m", "harvester.client.pbook", "wait", str(task_id)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(2)  # pbook is polling the task
        harvester.stop()
        time.sleep(6)  # several of its polls find nobody
        assert waiting.poll() is None, "pbook wait is still waiting while the harvester is down"
        harvester.start()
        harvester.start_pilot("ANALY_MANUAL")
        wait_for(lambda: waiting.poll() is not None, 120, "pbook wait to return")
        out, err = waiting.communicate()
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 0, out + err
    assert "cannot answer now; trying again" in err
    assert harvester.task(task_id)["status"] == "done"
