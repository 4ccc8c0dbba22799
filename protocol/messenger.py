"""The shared-filesystem messenger: how a pilot without a network talks to the harvester.

On sites whose compute nodes reach no network (PanDA's Titan, Summit and Cori
Harvesters), a pilot exchanges its calls with the harvester through files in a
folder on the shared filesystem, and a relay on the edge node carries them to
the database by the same rules as the HTTP API. This module is the contract
both sides read: the folder layout, the two envelopes, and the one way a file
is written.

Layout, below the queue's ``messenger_dir``::

    pilots/<pilot>/requests/<seq>.json   a call; written by the pilot
    pilots/<pilot>/taken/<seq>.json      the same call once the relay claimed it
    pilots/<pilot>/replies/<seq>.json    the answer; written by the relay
    pilots/<pilot>/outgoing/<seq>.data   a file the pilot uploads with call <seq>
    pilots/<pilot>/incoming/<seq>.data   a file the relay delivers for call <seq>

Every file has one writer and appears whole: it is written under a hidden
name (a leading dot, which no reader lists) and renamed into place, so nobody
reads half of one. A call changes hands by ``rename`` alone: the relay claims
a request by moving it to ``taken/``; a pilot that gave up waiting withdraws
it by deleting it from ``requests/``. Exactly one of the two succeeds, so a
call is either answered or known to the pilot as never handled.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

CallKind = Literal["acquire_jobs", "heartbeat", "update_job", "worker_node", "upload", "download"]

PILOTS = "pilots"
REQUESTS = "requests"
TAKEN = "taken"
REPLIES = "replies"
OUTGOING = "outgoing"
INCOMING = "incoming"
MAILBOX_FOLDERS = (REQUESTS, TAKEN, REPLIES, OUTGOING, INCOMING)

REQUEST_SUFFIX = ".json"
DATA_SUFFIX = ".data"
SEQ_PATTERN = re.compile(r"^[0-9]{1,12}$")
PILOT_FOLDER_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")
MAX_ENVELOPE_BYTES = 4 << 20
"""A request or reply larger than this is malformed (a final report is far below it)."""


class Request(BaseModel):
    """One call of a pilot, as its ``requests/<seq>.json`` holds it."""

    model_config = ConfigDict(extra="forbid")

    kind: CallKind
    token: str = Field(min_length=1, max_length=4096)
    """The pilot's token: every call carries it, as an HTTP call carries its header."""
    body: dict[str, Any] = Field(default_factory=dict)
    """The JSON body the same call would POST to the HTTP API."""


class Reply(BaseModel):
    """The relay's answer to one call, as ``replies/<seq>.json`` holds it."""

    model_config = ConfigDict(extra="forbid")

    status: int = Field(ge=100, le=599)
    """The HTTP status the same call would have been answered with."""
    body: Any = None
    detail: str | None = None
    """What was wrong, for a status of 400 and above."""
    file: str | None = None
    """For a download: the name of the delivered file in ``incoming/``."""


class UploadBody(BaseModel):
    """An upload: the file is ``outgoing/<seq>.data`` of the same call."""

    name: str = Field(min_length=1, max_length=255)
    sha256: str = Field(min_length=64, max_length=64)


class DownloadBody(BaseModel):
    """A download: the relay delivers the file as ``incoming/<seq>.data``."""

    sha256: str = Field(min_length=64, max_length=64)


def pilot_folder_name(pilot_id: str) -> str:
    """A pilot's mailbox name: its id in safe characters, and a random tail, so that a
    restarted pilot never reads the answers meant for an earlier one."""
    safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", pilot_id)[:180]
    return f"{safe}.{secrets.token_hex(4)}"


def seq_name(seq: int, suffix: str = REQUEST_SUFFIX) -> str:
    return f"{seq:08d}{suffix}"


def data_name(request_name: str) -> str:
    """The file that travels with call ``<seq>.json``: ``<seq>.data``."""
    return request_name.removesuffix(REQUEST_SUFFIX) + DATA_SUFFIX


def delivered_name(reply: Reply) -> str | None:
    """The only name a download's answer may give its file: a sequence number's."""
    name = reply.file
    if name is None or not SEQ_PATTERN.match(name.removesuffix(DATA_SUFFIX)):
        return None
    return name


FOLDER_MODE = 0o700
FILE_MODE = 0o600
"""Modes of everything in the messenger folder: the requests carry the pilots' token, so
only the site account that runs the harvester and its pilots may read them."""


def make_folder(path: Path) -> None:
    """``path``, and the parents it lacks, readable by the owner alone (``mkdir``'s
    ``parents`` would make those with the default mode)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(mode=FOLDER_MODE, exist_ok=True)


def write_whole(path: Path, data: bytes) -> None:
    """Write ``path`` under a hidden name in the same folder and rename it into place:
    readers see nothing, then all of it (never a prefix). Never through a link."""
    hidden = _hidden(path)
    try:
        with os.fdopen(_create(hidden), "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(hidden, path)
    finally:
        hidden.unlink(missing_ok=True)


def copy_whole(source: Path, target: Path, limit: int | None = None) -> int:
    """``source`` (a regular file, not a link) copied to ``target`` as :func:`write_whole`
    writes; its size. Over ``limit`` bytes: ``ValueError``, nothing written."""
    hidden = _hidden(target)
    copied = 0
    try:
        with open_regular(source) as src, os.fdopen(_create(hidden), "wb") as out:
            while chunk := src.read(1 << 20):
                copied += len(chunk)
                if limit is not None and copied > limit:
                    raise ValueError(f"{source.name} is over the limit of {limit} bytes")
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(hidden, target)
        return copied
    finally:
        hidden.unlink(missing_ok=True)


def open_regular(path: Path) -> Any:
    """``path`` opened for reading, refused (``OSError``) if it is a link or not a regular
    file: nothing in the folder may send a reader elsewhere."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path.name} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def is_real_folder(path: Path) -> bool:
    """A folder, and not a link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _hidden(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")


def _create(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)


def is_listed(name: str, suffix: str = REQUEST_SUFFIX) -> bool:
    """Whether a reader should look at this folder entry: a visible file of the kind
    (hidden names are files still being written)."""
    return not name.startswith(".") and name.endswith(suffix)
