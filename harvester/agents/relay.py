"""The relay: answers the calls of pilots that reach the harvester through a shared filesystem.

It runs on the edge node, beside the database, and does for a queue with
``messenger = "shared_fs"`` what the HTTP API does for the others: each
request file in a pilot's mailbox is claimed (renamed into ``taken/``),
authenticated by the token it carries, handled by the same service functions
the routes call, and answered with a reply file. An empty acquire that asks
to wait is held, as the HTTP long poll holds it, and looked at again each
scan until a job comes or its wait is over.

What goes wrong stays local. A file that is not a readable request (half
written by something that does not rename into place, or not a request at
all) is skipped and logged once, and read again if it changes: never fatal,
and a report that is completed later is handled then. A call claimed when the
harvester stopped is still in ``taken/``, and is handled when the relay
starts again, so a pilot waiting for it gets its answer.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

from db.errors import IllegalTransition
from db.models import Role
from harvester.agents.base import Agent
from harvester.context import HarvesterContext
from harvester.errors import Forbidden, HarvesterError, InvalidRequest, NotFoundError
from harvester.identity import Principal
from harvester.outage import is_conflict
from harvester.services import dispatch, pilot_calls
from harvester.stores.files import check_file_name, check_sha256
from protocol.messenger import (
    DATA_SUFFIX,
    INCOMING,
    MAX_ENVELOPE_BYTES,
    OUTGOING,
    PILOTS,
    REPLIES,
    REQUESTS,
    SEQ_PATTERN,
    TAKEN,
    DownloadBody,
    Reply,
    Request,
    UploadBody,
    is_listed,
    write_whole,
)
from protocol.pilot import AcquireRequest, HeartbeatRequest, UpdateJobRequest, WorkerReport

log = logging.getLogger(__name__)

RELAY_THREADS = 8
"""Calls handled at once: a slow one (a large upload) does not hold up the others."""
STALE_CLAIM_S = 300.0
"""A claimed call no thread of this process handles, this old, was left by a relay that
stopped (this instance before a restart, or another that lost the lease): handled again."""

MAX_REMEMBERED_BAD = 1000
"""Unreadable files remembered (so each is logged once); those gone are then forgotten."""


@dataclass
class _Call:
    """One claimed call: where it lives and what it asks."""

    mailbox: Path
    name: str
    request: Request
    held_until: float | None = None
    """For an acquire held for work: when its wait is over (monotonic)."""

    @property
    def taken(self) -> Path:
        return self.mailbox / TAKEN / self.name


class MessengerRelay(Agent):
    """Scans the messenger folders of the shared-filesystem queues, and answers."""

    name = "relay"

    def __init__(self, ctx: HarvesterContext, folders: list[Path]) -> None:
        super().__init__(ctx, interval_s=ctx.settings.messenger_scan_s)
        self.folders = folders
        self._pool = ThreadPoolExecutor(RELAY_THREADS, thread_name_prefix="relay")
        self._lock = threading.Lock()
        self._in_flight: set[Path] = set()
        self._held: list[_Call] = []
        self._logged_bad: dict[Path, tuple[int, int]] = {}
        self._resumed = False

    def stop(self) -> None:
        """Calls not yet started stay claimed in ``taken/``: the next start handles them."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- scanning ------------------------------------------------------------------

    def run_once(self) -> None:
        for folder in self.folders:
            (folder / PILOTS).mkdir(parents=True, exist_ok=True)
            for mailbox in _subfolders(folder / PILOTS):
                self._resume_claimed(mailbox)
                for name in _listed(mailbox / REQUESTS):
                    self._claim(mailbox, name)
        self._resumed = True
        self._look_at_held()

    def _claim(self, mailbox: Path, name: str) -> None:
        """Read a request and, when it is one, claim it (a withdrawn one is gone: skipped)."""
        path = mailbox / REQUESTS / name
        request = self._read(path)
        if request is None:
            return
        taken = mailbox / TAKEN / name
        try:
            os.replace(path, taken)
        except FileNotFoundError:  # withdrawn by its pilot in the meantime
            return
        os.utime(taken)  # claimed now: how old a claim is counts from here
        self._start(_Call(mailbox, name, request))

    def _resume_claimed(self, mailbox: Path) -> None:
        """Claimed calls no thread handles: all of them at the first scan, stale ones later."""
        for name in _listed(mailbox / TAKEN):
            path = mailbox / TAKEN / name
            with self._lock:
                if path in self._in_flight:
                    continue
            if self._resumed:
                try:
                    if time.time() - path.stat().st_mtime < STALE_CLAIM_S:
                        continue
                except FileNotFoundError:
                    continue
            request = self._read(path)
            if request is not None:
                log.info("relay: handling %s, claimed before a restart", path)
                self._start(_Call(mailbox, name, request))

    def _read(self, path: Path) -> Request | None:
        """The request in ``path``, or ``None`` (gone, or not a request: logged once per
        content, so that a file completed later is read again)."""
        info: os.stat_result | None = None
        try:
            info = path.stat()
            if not SEQ_PATTERN.match(path.name.removesuffix(".json")):
                raise ValueError("its name is not a call's sequence number")
            if info.st_size > MAX_ENVELOPE_BYTES:
                raise ValueError(f"{info.st_size} bytes, over {MAX_ENVELOPE_BYTES}")
            raw = path.read_bytes()
            request = Request.model_validate(json.loads(raw))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, ValidationError) as exc:
            seen = (info.st_size, info.st_mtime_ns) if info is not None else (-1, -1)
            if len(self._logged_bad) > MAX_REMEMBERED_BAD:
                self._logged_bad = {p: v for p, v in self._logged_bad.items() if p.exists()}
            if self._logged_bad.get(path) != seen:
                self._logged_bad[path] = seen
                log.warning("relay: skipping %s, not a readable request: %s", path, _short(exc))
            return None
        self._logged_bad.pop(path, None)
        return request

    def _start(self, call: _Call) -> None:
        with self._lock:
            if call.taken in self._in_flight:
                return
            self._in_flight.add(call.taken)
        self._pool.submit(self._handle, call)

    def _look_at_held(self) -> None:
        """Held acquires: asked again once a job may be there (this process no longer
        knows the queue idle), or answered empty when their wait is over."""
        now = time.monotonic()
        with self._lock:
            held, self._held = self._held, []
        for call in held:
            over = call.held_until is not None and now >= call.held_until
            if over or not self._known_idle(call):
                self._pool.submit(self._handle, call)
            else:
                with self._lock:
                    self._held.append(call)

    def _known_idle(self, call: _Call) -> bool:
        try:
            principal = pilot_calls.principal_of(self.ctx, call.request.token)
            req = AcquireRequest.model_validate(call.request.body)
            return dispatch.known_idle(self.ctx, principal, req)
        except (HarvesterError, ValidationError):
            return False  # asked again: the handler answers the error

    # -- answering -----------------------------------------------------------------

    def _handle(self, call: _Call) -> None:
        """Answer one call; an acquire that is to wait for work is held instead."""
        try:
            reply = self._answer(call)
        except HarvesterError as exc:
            reply = Reply(status=exc.status_code, detail=str(exc))
        except ValidationError as exc:
            reply = Reply(status=422, detail=_short(exc))
        except IllegalTransition as exc:
            reply = Reply(status=409, detail=str(exc))
        except DataError as exc:
            reason = str(getattr(exc, "orig", exc)).splitlines()[0]
            reply = Reply(status=400, detail=f"a value cannot be stored: {reason}")
        except (OperationalError, SQLAlchemyTimeoutError) as exc:
            if not is_conflict(exc):
                self.ctx.outage.failed(f"relay {call.request.kind}", exc)
            reply = Reply(status=503, detail="the database is unavailable; nothing was changed")
        except Exception:
            log.exception("relay: unexpected error on %s", call.taken)
            reply = Reply(status=500, detail="internal error; see the harvester log")
        if reply is None:
            with self._lock:
                self._held.append(call)
            return
        try:
            write_whole(call.mailbox / REPLIES / call.name, reply.model_dump_json().encode())
        except FileNotFoundError:
            log.info("relay: %s has no mailbox any more; answer dropped", call.mailbox.name)
        call.taken.unlink(missing_ok=True)
        with self._lock:
            self._in_flight.discard(call.taken)

    def _answer(self, call: _Call) -> Reply | None:
        request = call.request
        principal = pilot_calls.principal_of(self.ctx, request.token)
        if principal.role is not Role.PILOT and not principal.is_admin:
            raise Forbidden("only pilot tokens may use the messenger")
        body = request.body
        if request.kind == "acquire_jobs":
            return self._acquire(call, principal, AcquireRequest.model_validate(body))
        if request.kind == "heartbeat":
            commands = pilot_calls.heartbeat(
                self.ctx, principal, HeartbeatRequest.model_validate(body)
            )
            return Reply(status=200, body={"commands": {str(k): v for k, v in commands.items()}})
        if request.kind == "update_job":
            update = pilot_calls.update_job(
                self.ctx, principal, UpdateJobRequest.model_validate(body)
            )
            return Reply(status=200, body=update.model_dump(mode="json"))
        if request.kind == "worker_node":
            pilot_calls.worker_node(self.ctx, principal, WorkerReport.model_validate(body))
            return Reply(status=204)
        if request.kind == "upload":
            return self._upload(call, UploadBody.model_validate(body))
        return self._download(call, DownloadBody.model_validate(body))

    def _acquire(self, call: _Call, principal: Principal, req: AcquireRequest) -> Reply | None:
        if call.held_until is None:
            call.held_until = time.monotonic() + req.wait_s
        if dispatch.known_idle(self.ctx, principal, req):
            jobs = []
        else:
            jobs = pilot_calls.acquire(self.ctx, principal, req)
        if not jobs and time.monotonic() < call.held_until:
            return None
        return Reply(status=200, body={"jobs": [job.model_dump(mode="json") for job in jobs]})

    def _upload(self, call: _Call, body: UploadBody) -> Reply:
        check_file_name(body.name)
        check_sha256(body.sha256)
        handed = call.mailbox / OUTGOING / call.name.replace(".json", DATA_SUFFIX)
        if not handed.is_file():
            raise InvalidRequest(f"upload {body.name}: its file {handed.name} is not there")
        size = self.ctx.files.put_file(handed, body.sha256)
        handed.unlink(missing_ok=True)
        return Reply(status=201, body={"name": body.name, "sha256": body.sha256, "size": size})

    def _download(self, call: _Call, body: DownloadBody) -> Reply:
        check_sha256(body.sha256)
        source = self.ctx.files.path(body.sha256)
        if not source.is_file():
            raise NotFoundError(f"no file with sha256 {body.sha256}")
        delivered = call.mailbox / INCOMING / call.name.replace(".json", DATA_SUFFIX)
        hidden = delivered.with_name(f".{delivered.name}")
        try:
            shutil.copyfile(source, hidden)
            os.replace(hidden, delivered)
        finally:
            hidden.unlink(missing_ok=True)
        return Reply(status=200, body={"size": delivered.stat().st_size}, file=delivered.name)


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _listed(folder: Path) -> list[str]:
    """The visible request files of a folder, in the order they were sent."""
    try:
        return sorted(e.name for e in os.scandir(folder) if is_listed(e.name))
    except FileNotFoundError:
        return []


def _short(exc: Exception) -> str:
    return str(exc).replace("\n", "; ")[:300]
