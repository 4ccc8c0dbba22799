"""Jobs: one attempt as shown, and the counts and errors the monitor summarises."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from protocol.results import ResultFile
from protocol.states import JobStatus, TaskStatus


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
    nodes: int = 1
    """Nodes of the job's allocation (``pcontainer --nNodes``)."""
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


class EndedJob(BaseModel):
    """A job (its final attempt) that ended, with the outputs it registered (by their
    logical file names, ``<outDS>.<taskID>._<serial>.<name>``)."""

    job_id: int
    job_index: int
    attempt_nr: int
    status: JobStatus
    exit_code: int | None
    pilot_error_code: int | None
    pilot_error_diag: str | None
    outputs: list[ResultFile] = Field(default_factory=list)


class JobEndings(BaseModel):
    """``GET /api/v1/tasks/{id}/endings``: jobs of a task that ended after a cursor."""

    cursor: int
    """Pass it as ``after`` next time: only jobs that ended later are answered."""
    task_status: TaskStatus
    jobs: list[EndedJob] = Field(default_factory=list)
