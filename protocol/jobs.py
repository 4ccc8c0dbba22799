"""Jobs: one attempt as shown, and the counts and errors the monitor summarises."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from protocol.states import JobStatus


class JobPublic(BaseModel):
    id: int
    task_id: int
    job_index: int
    attempt_nr: int
    status: JobStatus
    queue: str | None
    worker_id: int | None
    batch_id: str | None = None
    pilot_id: str | None
    node: str | None
    exit_code: int | None
    pilot_error_code: int | None
    pilot_error_diag: str | None
    brokerage_message: str | None
    gpus: int = 0
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    heartbeat_at: datetime | None
    metrics: dict[str, Any] | None = None


class JobCountRow(BaseModel):
    key: str | int | None
    counts: dict[str, int]
    total: int


class JobSummary(BaseModel):
    group_by: str
    rows: list[JobCountRow]


class ErrorRow(BaseModel):
    code: int
    name: str
    count: int
    tasks: int
    example_job_id: int
    example_diag: str | None
