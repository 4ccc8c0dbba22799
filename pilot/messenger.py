"""The pilot's link through a shared filesystem, for compute nodes without a network.

Each call is a request file in the pilot's mailbox (``protocol.messenger`` has
the layout); the harvester's relay on the edge node answers it with a reply
file. The pilot opens no socket. What the HTTP link does with a connection
error this link does with a call nobody answered in time: it withdraws the
request (so it is never handled late), and retries with back-off within the
call's ``retry_for_s``. A request the relay already claimed cannot be
withdrawn: its answer is on its way (after a harvester restart, if need be),
and the pilot waits for it, so a final report is never half-known.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pilot.link import ServerError, sha256_of
from pilot.specs import UnreadableJob, read_job
from protocol.messenger import (
    DATA_SUFFIX,
    INCOMING,
    MAILBOX_FOLDERS,
    MAX_ENVELOPE_BYTES,
    OUTGOING,
    PILOTS,
    REPLIES,
    REQUESTS,
    CallKind,
    Reply,
    Request,
    copy_whole,
    delivered_name,
    make_folder,
    open_regular,
    pilot_folder_name,
    seq_name,
    write_whole,
)
from protocol.pilot import JobSpec

log = logging.getLogger(__name__)

ANSWER_WAIT_S = 15.0
"""The shortest wait for an answer, even for a call that is not retried (a heartbeat):
a relay scanning a shared filesystem takes a moment, unlike an HTTP server."""
CLAIMED_WAIT_S = 900.0
"""How long to wait for the answer to a call the relay claimed (it is being handled,
or will be when a restarted harvester takes its claimed calls up again)."""


class SharedFsLink:
    """The harvester's calls as files in ``root/pilots/<this pilot>/``."""

    def __init__(
        self,
        root: Path,
        token: str,
        pilot_id: str,
        *,
        stop: threading.Event | None = None,
        poll_s: float = 0.05,
    ) -> None:
        if not root.is_dir():
            raise ServerError(f"the messenger folder {root} does not exist (is it mounted?)")
        self.root = root
        self.mailbox = root / PILOTS / pilot_folder_name(pilot_id)
        try:
            for folder in MAILBOX_FOLDERS:
                make_folder(self.mailbox / folder)
        except OSError as exc:
            raise ServerError(f"cannot make a mailbox in {root}: {exc}") from exc
        self._token = token
        self._stop = stop or threading.Event()
        self._poll_s = poll_s
        self._seq = itertools.count(1)
        self._seq_lock = threading.Lock()

    @property
    def where(self) -> str:
        return f"{self.root} (shared filesystem)"

    def close(self) -> None:
        """The pilot ends: its mailbox goes (every call of it was answered or withdrawn)."""
        shutil.rmtree(self.mailbox, ignore_errors=True)

    # -- the calls -------------------------------------------------------------------

    def acquire_jobs(
        self, body: dict[str, Any], *, retry_for_s: float = 120.0
    ) -> list[JobSpec | UnreadableJob]:
        """Claim jobs; each is read into its ``JobSpec`` here, where it arrives. A pilot
        told to stop stops waiting for the answer (its request is withdrawn)."""
        reply = self._call("acquire_jobs", body, retry_for_s=retry_for_s, interruptible=True)
        jobs = reply.body.get("jobs") if isinstance(reply.body, dict) else None
        if not isinstance(jobs, list):
            raise ServerError(f"acquire_jobs: an answer without a list of jobs: {reply.body!r}")
        return [read_job(raw) for raw in jobs]

    def heartbeat(self, body: dict[str, Any]) -> dict[str, str]:
        reply = self._call("heartbeat", body, retry_for_s=0, interruptible=True)
        commands = reply.body.get("commands", {}) if isinstance(reply.body, dict) else {}
        return {str(job_id): str(command) for job_id, command in commands.items()}

    def update_job(self, body: dict[str, Any], *, retry_for_s: float = 600.0) -> dict[str, Any]:
        reply = self._call("update_job", body, retry_for_s=retry_for_s)
        return reply.body if isinstance(reply.body, dict) else {}

    def worker_node(self, body: dict[str, Any]) -> None:
        self._call("worker_node", body, retry_for_s=30.0)

    def upload(self, path: Path, name: str, *, retry_for_s: float = 300.0) -> dict[str, Any]:
        """Hand a file to the relay, which stores it after checking the sha256 taken here."""
        sha = sha256_of(path)
        reply = self._call(
            "upload", {"name": name, "sha256": sha}, retry_for_s=retry_for_s, upload=path
        )
        return reply.body if isinstance(reply.body, dict) else {}

    def download(self, sha256: str, target: Path, *, retry_for_s: float = 300.0) -> None:
        """A file by checksum into ``target``, verified here."""
        reply = self._call("download", {"sha256": sha256}, retry_for_s=retry_for_s)
        name = delivered_name(reply)  # a sequence number's, never a path elsewhere
        if name is None:
            raise ServerError(f"download {sha256}: the answer names no file of its own")
        delivered = self.mailbox / INCOMING / name
        try:
            shutil.move(delivered, target)
        except OSError as exc:
            raise ServerError(f"download {sha256}: {exc}") from exc
        got = sha256_of(target)
        if got != sha256:
            target.unlink(missing_ok=True)
            raise ServerError(f"{target.name}: checksum mismatch (expected {sha256}, got {got})")

    # -- one exchange ----------------------------------------------------------------

    def _call(
        self,
        kind: CallKind,
        body: dict[str, Any],
        *,
        retry_for_s: float,
        upload: Path | None = None,
        interruptible: bool = False,
    ) -> Reply:
        """Ask until answered: a 4xx is final; no answer, or a 5xx, is asked again with
        back-off while ``retry_for_s`` lasts. The shared folder failing (full, gone) is
        the same as no answer. ``interruptible``: the pilot's stop ends the wait (not
        for reports: a final report waits for its answer)."""
        deadline = time.monotonic() + retry_for_s
        delay = 0.5
        while True:
            wait = max(ANSWER_WAIT_S, deadline - time.monotonic())
            try:
                reply = self._exchange(kind, body, wait, upload, interruptible)
            except OSError as exc:
                reply = Reply(status=503, detail=f"the shared folder {self.root}: {exc}")
            if reply is None:
                problem = f"no answer from the relay at {self.root} in {wait:.0f}s"
            elif reply.status < 400:
                return reply
            elif reply.status < 500:
                raise ServerError(reply.detail or f"refused ({reply.status})", reply.status)
            else:
                problem = f"relay error {reply.status}: {reply.detail}"
            if time.monotonic() + delay > deadline:
                raise ServerError(problem)
            log.warning("%s: %s; asking again in %.1fs", kind, problem, delay)
            if self._stop.wait(delay):
                raise ServerError(f"{problem} (pilot stopping, not retried)")
            delay = min(delay * 2, 15.0)

    def _exchange(
        self,
        kind: CallKind,
        body: dict[str, Any],
        wait_s: float,
        upload: Path | None,
        interruptible: bool,
    ) -> Reply | None:
        """One request and its reply; ``None`` when nobody answered within ``wait_s`` (or
        before the pilot's stop, when ``interruptible``) and the request was withdrawn
        unhandled."""
        with self._seq_lock:
            seq = next(self._seq)
        request_path = self.mailbox / REQUESTS / seq_name(seq)
        data_path = self.mailbox / OUTGOING / seq_name(seq, DATA_SUFFIX)
        if upload is not None:
            copy_whole(upload, data_path)
        envelope = Request(kind=kind, token=self._token, body=body)
        write_whole(request_path, envelope.model_dump_json().encode())
        reply_path = self.mailbox / REPLIES / seq_name(seq)
        stop = self._stop if interruptible else None
        reply = self._await(reply_path, time.monotonic() + wait_s, stop)
        if reply is None:
            try:
                request_path.unlink()
            except FileNotFoundError:  # claimed by the relay: the answer comes
                log.info("%s %s: claimed by the relay; waiting for its answer", kind, seq)
                reply = self._await(reply_path, time.monotonic() + CLAIMED_WAIT_S, None)
            else:
                data_path.unlink(missing_ok=True)
                return None
        return reply

    def _await(
        self, reply_path: Path, deadline: float, stop: threading.Event | None
    ) -> Reply | None:
        """The reply once it is there (read once, then removed), or ``None`` at the
        deadline or the stop. Polled: a shared filesystem tells no other node when a file
        appears."""
        pause = 0.005
        while True:
            try:
                with open_regular(reply_path) as fh:
                    raw = fh.read(MAX_ENVELOPE_BYTES + 1)
            except FileNotFoundError:
                if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                    return None
                time.sleep(pause)
                pause = min(self._poll_s, pause * 1.5)
                continue
            reply_path.unlink(missing_ok=True)
            return _read_reply(reply_path, raw)


def _read_reply(path: Path, raw: bytes) -> Reply:
    """A reply as the relay wrote it; one the pilot cannot read counts as a server error
    (asked again), never as an answer."""
    try:
        if len(raw) > MAX_ENVELOPE_BYTES:
            raise ValueError(f"{len(raw)} bytes")
        return Reply.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        log.warning("unreadable reply %s: %s", path.name, str(exc)[:300])
        return Reply(status=502, detail=f"unreadable reply {path.name}")
