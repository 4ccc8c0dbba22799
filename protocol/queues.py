"""Queues and the workers (batch slots) that run their pilots."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from protocol.bodies import RequestBody
from protocol.states import WorkerStatus


class QueuePublic(BaseModel):
    name: str
    provider: str
    status: str
    config: dict[str, Any]
    workers: dict[str, int] = Field(default_factory=dict)
    activated_jobs: int = 0


class QueueStatusChange(RequestBody):
    status: Literal["online", "offline", "test"]


class WorkerPublic(BaseModel):
    id: int
    queue: str
    provider: str
    batch_id: str | None
    status: WorkerStatus
    diagnostics: str | None
    exit_code: int | None
    node: str | None
    nodes: int = 1
    """Nodes of the worker's allocation."""
    submitted_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
