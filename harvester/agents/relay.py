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

import contextlib
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
    INCOMING,
    MAILBOX_FOLDERS,
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
    copy_whole,
    data_name,
    is_listed,
    is_real_folder,
    make_folder,
    open_regular,
    write_whole,
)
from protocol.pilot import AcquireRequest, HeartbeatRequest, UpdateJobRequest, WorkerReport

log = logging.getLogger(__name__)

RELAY_THREADS = 8
"""Calls handled at once: a slow one (a large upload) does not hold up the others."""
STALE_CLAIM_S = 10.0
"""A relay touches the calls it has claimed at every scan; a claimed call untouched this
long was left by a relay that stopped (this instance before a restart, or another that
lost the agents' lease) and is handled again."""
MAILBOX_IDLE_S = 3600.0
"""A mailbox with no call, whose pilot has sent nothing for this long (a live pilot
heartbeats or polls every half minute at most), belongs to a pilot that died: removed."""

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
        self._logged_errors: set[str] = set()

    def stop(self) -> None:
        """Calls not yet started stay claimed in ``taken/``: the next start handles them."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- scanning ------------------------------------------------------------------

    def run_once(self) -> None:
        self._touch_claims()
        for folder in self.folders:
            make_folder(folder / PILOTS)
            for mailbox in _subfolders(folder / PILOTS):
                try:
                    self._scan(mailbox)
                except OSError as exc:  # one mailbox in trouble: the others go on
                    self._log_once(f"relay: cannot read the mailbox {mailbox}: {exc}")
        self._look_at_held()

    def _scan(self, mailbox: Path) -> None:
        if not all(is_real_folder(mailbox / sub) for sub in MAILBOX_FOLDERS):
            self._log_once(f"relay: skipping {mailbox}: not a mailbox of real folders")
            return
        self._resume_claimed(mailbox)
        names = _listed(mailbox / REQUESTS)
        for name in names:
            self._claim(mailbox, name)
        if not names and not _listed(mailbox / TAKEN):
            self._sweep_if_idle(mailbox)

    def _touch_claims(self) -> None:
        """Mark the calls this relay handles or holds as alive (see ``STALE_CLAIM_S``)."""
        with self._lock:
            claimed = list(self._in_flight)
        for path in claimed:
            with contextlib.suppress(OSError):
                os.utime(path)

    def _sweep_if_idle(self, mailbox: Path) -> None:
        if time.time() - (mailbox / REQUESTS).stat().st_mtime > MAILBOX_IDLE_S:
            log.info("relay: removing %s, idle for over %.0fs", mailbox, MAILBOX_IDLE_S)
            shutil.rmtree(mailbox, ignore_errors=True)

    def _log_once(self, message: str) -> None:
        if message not in self._logged_errors:
            self._logged_errors.add(message)
            log.warning("%s", message)

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
        """Claimed calls no relay handles any more (untouched for ``STALE_CLAIM_S``)."""
        for name in _listed(mailbox / TAKEN):
            path = mailbox / TAKEN / name
            with self._lock:
                if path in self._in_flight:
                    continue
            try:
                if time.time() - os.lstat(path).st_mtime < STALE_CLAIM_S:
                    continue  # another relay's, alive
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
            info = os.lstat(path)
            if not SEQ_PATTERN.match(path.name.removesuffix(".json")):
                raise ValueError("its name is not a call's sequence number")
            if info.st_size > MAX_ENVELOPE_BYTES:
                raise ValueError(f"{info.st_size} bytes, over {MAX_ENVELOPE_BYTES}")
            with open_regular(path) as fh:
                raw = fh.read(MAX_ENVELOPE_BYTES + 1)
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
        """Answer one call; an acquire that is to wait for work is held instead. A call
        whose answer could not be written stays claimed: handled again once stale."""
        answered = False
        try:
            answered = self._handle_once(call)
        finally:
            if not answered:
                with self._lock:
                    held = call in self._held
                    if not held:
                        self._in_flight.discard(call.taken)
            if call.request.kind == "upload" and (answered or not call.taken.exists()):
                with contextlib.suppress(OSError):  # the data travels with its call only
                    (call.mailbox / OUTGOING / data_name(call.name)).unlink()

    def _handle_once(self, call: _Call) -> bool:
        """Whether the call was answered (``False``: held, or its answer not written)."""
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
            return False
        replies = call.mailbox / REPLIES
        if not replies.exists():
            log.info("relay: %s has no mailbox any more; answer dropped", call.mailbox.name)
        elif not is_real_folder(replies):
            self._log_once(f"relay: {replies} is not a real folder; answers not written")
            return False
        else:
            try:
                write_whole(replies / call.name, reply.model_dump_json().encode())
            except OSError as exc:
                self._log_once(f"relay: cannot answer in {call.mailbox}: {exc}")
                return False
        call.taken.unlink(missing_ok=True)
        with self._lock:
            self._in_flight.discard(call.taken)
        return True

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
        handed = call.mailbox / OUTGOING / data_name(call.name)
        try:
            size = self.ctx.files.put_file(handed, body.sha256)
        except FileNotFoundError as exc:
            raise InvalidRequest(
                f"upload {body.name}: its file {handed.name} is not there"
            ) from exc
        except OSError as exc:  # a link, not a file: refused, not followed
            raise InvalidRequest(f"upload {body.name}: {handed.name}: {exc}") from exc
        return Reply(status=201, body={"name": body.name, "sha256": body.sha256, "size": size})

    def _download(self, call: _Call, body: DownloadBody) -> Reply:
        check_sha256(body.sha256)
        source = self.ctx.files.path(body.sha256)
        if not source.is_file():
            raise NotFoundError(f"no file with sha256 {body.sha256}")
        incoming = call.mailbox / INCOMING
        if not is_real_folder(incoming):
            raise InvalidRequest(f"{incoming.name} is not a real folder")
        name = data_name(call.name)
        size = copy_whole(source, incoming / name)
        return Reply(status=200, body={"size": size}, file=name)


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
