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


def write_whole(path: Path, data: bytes) -> None:
    """Write ``path`` under a hidden name in the same folder and rename it into place:
    readers see nothing, then all of it (never a prefix)."""
    hidden = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}")
    try:
        with hidden.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(hidden, path)
    finally:
        hidden.unlink(missing_ok=True)


def is_listed(name: str, suffix: str = REQUEST_SUFFIX) -> bool:
    """Whether a reader should look at this folder entry: a visible file of the kind
    (hidden names are files still being written)."""
    return not name.startswith(".") and name.endswith(suffix)
