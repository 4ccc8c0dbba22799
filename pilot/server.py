"""The pilot's HTTP client for the harvester's pilot endpoints.

Transient trouble (connection refused while the service restarts, 5xx) is
retried with back-off for a bounded time; a 4xx is final and raised with the
server's message. Given several server URLs (comma-separated: harvester
instances sharing one database), a pilot that cannot reach one goes on with
the next.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from pilot.link import ServerError, sha256_of
from pilot.specs import UnreadableJob, read_job
from protocol.pilot import JobSpec

log = logging.getLogger(__name__)


class PilotServer:
    """Calls the harvester's REST API with the pilot's token."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout_s: float = 30.0,
        stop: threading.Event | None = None,
    ) -> None:
        self.urls = [u.strip().rstrip("/") for u in url.split(",") if u.strip()]
        if not self.urls:
            raise ValueError("no server URL")
        self._current = 0
        self._stop = stop or threading.Event()
        self._client = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s)

    @property
    def url(self) -> str:
        """The server URL now in use."""
        return self.urls[self._current]

    @property
    def where(self) -> str:
        return ", ".join(self.urls)

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, path: str, *, retry_for_s: float, **kwargs: Any) -> httpx.Response:
        deadline = time.monotonic() + retry_for_s
        delay = 0.5
        while True:
            try:
                response = self._client.request(method, self.url + path, **kwargs)
            except httpx.TransportError as exc:
                problem = f"cannot reach {self.url}: {exc}"
                if len(self.urls) > 1:  # fail over: the next call goes to the next instance
                    self._current = (self._current + 1) % len(self.urls)
                    problem += f"; next try: {self.url}"
            else:
                if response.status_code < 400:
                    return response
                if response.status_code < 500:
                    raise ServerError(_detail(response), response.status_code)
                problem = f"server error {response.status_code}: {_detail(response)}"
            if time.monotonic() + delay > deadline:
                raise ServerError(problem)
            log.warning("%s %s: %s; retrying in %.1fs", method, path, problem, delay)
            if self._stop.wait(delay):  # the pilot was told to stop: no more retries
                raise ServerError(f"{problem} (pilot stopping, not retried)")
            delay = min(delay * 2, 15.0)

    def acquire_jobs(
        self, body: dict[str, Any], *, retry_for_s: float = 120.0
    ) -> list[JobSpec | UnreadableJob]:
        """Claim jobs; each is read into its ``JobSpec`` here, where it arrives.

        A reply without a list of jobs is a ``ServerError`` without a status
        code, like an unreachable server: the pilot asks again later.
        """
        response = self._call(
            "POST", "/api/v1/pilot/acquire_jobs", json=body, retry_for_s=retry_for_s
        )
        try:
            reply = response.json()
        except ValueError:
            reply = None
        jobs = reply.get("jobs") if isinstance(reply, dict) else None
        if not isinstance(jobs, list):
            raise ServerError(
                f"acquire_jobs: a reply without a list of jobs: {response.text[:200]!r}"
            )
        return [read_job(raw) for raw in jobs]

    def heartbeat(self, body: dict[str, Any]) -> dict[str, str]:
        response = self._call("POST", "/api/v1/pilot/heartbeat", json=body, retry_for_s=0)
        commands: dict[str, str] = response.json().get("commands", {})
        return commands

    def update_job(self, body: dict[str, Any], *, retry_for_s: float = 600.0) -> dict[str, Any]:
        response = self._call(
            "POST", "/api/v1/pilot/update_job", json=body, retry_for_s=retry_for_s
        )
        reply: dict[str, Any] = response.json()
        return reply

    def worker_node(self, body: dict[str, Any]) -> None:
        self._call("POST", "/api/v1/pilot/worker_node", json=body, retry_for_s=30.0)

    def upload(self, path: Path, name: str, *, retry_for_s: float = 300.0) -> dict[str, Any]:
        """Upload a file; the server checks the sha256 computed here."""
        sha = sha256_of(path)
        deadline = time.monotonic() + retry_for_s
        while True:
            with path.open("rb") as fh:
                try:
                    response = self._call(
                        "POST",
                        "/api/v1/files",
                        params={"name": name, "sha256": sha},
                        content=fh,
                        retry_for_s=0,
                        headers={"Content-Length": str(path.stat().st_size)},
                    )
                    reply: dict[str, Any] = response.json()
                    return reply
                except ServerError as exc:
                    if exc.status_code is not None or time.monotonic() > deadline:
                        raise
                    time.sleep(2.0)

    def download(self, sha256: str, target: Path, *, retry_for_s: float = 300.0) -> None:
        """Download a file by checksum into ``target`` and verify it."""
        response = self._call("GET", f"/api/v1/files/{sha256}", retry_for_s=retry_for_s)
        target.write_bytes(response.content)
        got = sha256_of(target)
        if got != sha256:
            target.unlink(missing_ok=True)
            raise ServerError(f"{target.name}: checksum mismatch (expected {sha256}, got {got})")


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return str(detail)
