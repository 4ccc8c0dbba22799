"""One state change of a task or a job, as its history lists it."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class HistoryEntry(BaseModel):
    from_status: str | None
    to_status: str
    at: datetime
    reason: str | None
