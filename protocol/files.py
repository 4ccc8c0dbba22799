"""Files: the inputs a task names, the outputs a pilot reports, and a registered file."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from protocol.bodies import MAX_FILE_BYTES, RequestBody


class InputFile(RequestBody):
    """A file from the file store to put in each job's work dir."""

    name: str
    sha256: str


class OutputFile(RequestBody):
    name: str
    sha256: str
    size: int = Field(ge=0, le=MAX_FILE_BYTES)


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
