"""Files: the inputs a task names, the outputs a pilot reports, and a registered file."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from protocol.bodies import MAX_FILE_BYTES, RequestBody

INLINE_FILE_MAX_BYTES = 64 << 10
"""Files up to this size may travel inside the request that names them (base64,
``content_b64``) instead of in an upload of their own: a submission's small inputs (an
``hpcaf.Executor`` batch of calls), a pilot's final outputs and log. Requests fewer on
the round trip of a short call."""

_CARRIED_MAX_CHARS = 4 * ((INLINE_FILE_MAX_BYTES + 2) // 3)


class InputFile(RequestBody):
    """A file from the file store to put in each job's work dir."""

    name: str
    sha256: str
    content_b64: str | None = Field(None, max_length=_CARRIED_MAX_CHARS, exclude=True)
    """A small input carried in the submission: stored and registered as the owner's
    input as an upload would be; never kept in the task's parameters nor sent to pilots."""


class OutputFile(RequestBody):
    """A file a job wrote: uploaded before the report, or carried in it (small files)."""

    name: str
    sha256: str
    size: int = Field(ge=0, le=MAX_FILE_BYTES)
    content_b64: str | None = Field(None, max_length=_CARRIED_MAX_CHARS)


class FilePublic(BaseModel):
    id: int
    name: str
    dataset: str | None
    sha256: str
    size: int
    kind: str
    task_id: int | None
    job_id: int | None
    created_at: datetime
