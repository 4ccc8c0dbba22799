"""Request and reply bodies of the REST API.

Task submission takes panda-client's task-parameter dict (camelCase, as
``pcontainer --dumpJson`` writes it); every other body is snake_case.
Create schemas and public schemas are separate classes.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from db.states import JobStatus, TaskStatus, WorkerStatus
from harvester.json_documents import check_tree

MAX_ID = 2**31 - 1
"""Ids and codes live in 32-bit INTEGER columns; larger values are refused (422)."""
MAX_FILE_BYTES = 2**62

MAX_EXEC_LENGTH = 65_536
T = TypeVar("T")


class RequestBody(BaseModel):
    """A body the API accepts: unknown fields, NUL characters and values nested
    deeper than ``MAX_NESTING`` are refused (422).

    PostgreSQL cannot store a NUL in text; refusing it on every database keeps
    the two backends answering alike.
    """

    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _plain(cls, value: Any) -> Any:
        return check_tree(value)


class InputFile(RequestBody):
    """A file from the file store to put in each job's work dir."""

    name: str
    sha256: str


class TaskCreate(RequestBody):
    """Task parameters as pcontainer sends them (panda-client names)."""

    taskName: str | None = Field(None, max_length=256)
    containerImage: str = Field(min_length=1, max_length=256)
    exec: str = Field("", max_length=MAX_EXEC_LENGTH)
    outDS: str = Field(max_length=256)
    outputs: list[str] = Field(default_factory=list, max_length=100)
    inputs: list[InputFile] = Field(default_factory=list, max_length=100)
    site: str | None = Field(None, max_length=128)
    excludedSite: list[str] = Field(default_factory=list, max_length=100)
    architecture: str | None = Field(None, max_length=256)
    nJobs: int = Field(1, ge=1)
    priority: int = Field(1000, ge=0, le=2000)
    maxAttempt: int = Field(3, ge=1, le=20)
    coreCount: int = Field(1, ge=1, le=1024)
    ramCount: int | None = Field(
        None, ge=1, le=4_194_304, description="MiB per job (default: what the queue's slot has)"
    )
    maxWalltime: int | None = Field(
        None, ge=60, le=30 * 86400, description="seconds per job (default: the queue's maximum)"
    )
    env: dict[str, str] = Field(default_factory=dict)
    transform: Literal["runcontainer", "pyhf_fit", "hpo_eval"] = "runcontainer"
    transformArgs: dict[str, Any] = Field(default_factory=dict)
    jobParameters: list[dict[str, Any]] | None = Field(
        None, description="per-job parameters; when given, one job per entry"
    )
    steering: dict[str, Any] | None = Field(
        None,
        description="a steered scan (phpo, pfit --adaptive): jobs are made point by point; "
        "see docs/phpo.md",
    )

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$", key):
                raise ValueError(f"invalid environment variable name {key!r}")
        return value


class TaskSubmitted(BaseModel):
    jediTaskID: int
    status: TaskStatus


class TaskReaders(RequestBody):
    """Users to let read a task's logs, outputs and results, and users to stop."""

    add: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=100)
    remove: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=100)


class TaskPublic(BaseModel):
    id: int
    name: str
    owner: str
    status: TaskStatus
    kind: str
    image: str
    out_ds: str
    n_jobs: int
    site: str | None
    architecture: str | None
    priority: int
    max_attempt: int
    error_dialog: str | None
    readers: list[str] = Field(
        default_factory=list, description="users the owner shared the task with"
    )
    created_at: datetime
    modified_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    job_counts: dict[str, int] = Field(default_factory=dict)
    progress: float = Field(0.0, description="share of the jobs that ended, 0 to 1")
    params: dict[str, Any] | None = None


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


class HistoryEntry(BaseModel):
    from_status: str | None
    to_status: str
    at: datetime
    reason: str | None


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


class Page(BaseModel, Generic[T]):
    """A page of a list with the total count."""

    total: int
    limit: int
    offset: int
    items: list[T]


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
    submitted_at: datetime
    started_at: datetime | None
    ended_at: datetime | None


# ---- pilot endpoints ---------------------------------------------------------


class AcquireRequest(RequestBody):
    queue: str = Field(max_length=128)
    pilot_id: str = Field(min_length=1, max_length=256)
    n_jobs: int = Field(1, ge=1, le=1000)
    worker_id: int | None = Field(None, ge=1, le=MAX_ID)
    node: str | None = Field(None, max_length=256)
    cores: int | None = Field(None, ge=1, le=MAX_ID)
    memory_mb: int | None = Field(None, ge=1, le=MAX_ID)
    gpus: int = Field(0, ge=0, le=64, description="GPUs the pilot's node offers")


class JobSpec(BaseModel):
    """Everything a pilot needs to run one job."""

    job_id: int
    task_id: int
    job_index: int
    attempt_nr: int
    owner: str
    out_ds: str
    image: str
    image_path: str | None
    image_environment: dict[str, str] = Field(default_factory=dict)
    transform: str
    exec: str
    transform_args: dict[str, Any] = Field(default_factory=dict)
    job_parameters: dict[str, Any] | None = None
    env: dict[str, str]
    outputs: list[str]
    inputs: list[InputFile]
    cores: int
    memory_mb: int
    walltime_s: int
    gpus: int = 0
    container: dict[str, Any]
    heartbeat_interval_s: float


class AcquireReply(BaseModel):
    jobs: list[JobSpec]


class HeartbeatRequest(RequestBody):
    pilot_id: str = Field(min_length=1, max_length=256)
    worker_id: int | None = Field(None, ge=1, le=MAX_ID)
    job_ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] = Field(
        default_factory=list, max_length=1000
    )


class HeartbeatReply(BaseModel):
    commands: dict[int, Literal["tobekilled"]] = Field(default_factory=dict)


class OutputFile(RequestBody):
    name: str
    sha256: str
    size: int = Field(ge=0, le=MAX_FILE_BYTES)


class UpdateJobRequest(RequestBody):
    job_id: int = Field(ge=1, le=MAX_ID)
    pilot_id: str = Field(min_length=1, max_length=256)
    state: Literal["starting", "running", "finished", "failed"]
    exit_code: int | None = Field(None, ge=-(2**31), le=MAX_ID)
    pilot_error_code: int | None = Field(None, ge=0, le=MAX_ID)
    pilot_error_diag: str | None = Field(None, max_length=8192)
    outputs: list[OutputFile] = Field(default_factory=list, max_length=100)
    log: OutputFile | None = None
    metrics: dict[str, Any] | None = None


class UpdateJobReply(BaseModel):
    job_id: int
    status: JobStatus
    changed: bool
    command: Literal["tobekilled"] | None = None


class BulkUpdateRequest(RequestBody):
    """Many ``update_job`` reports at once (PanDA's updateJobsInBulk)."""

    updates: list[UpdateJobRequest] = Field(min_length=1, max_length=1000)


class BulkUpdateItem(BaseModel):
    """The answer for one report of a bulk update: as ``update_job``'s, or its error."""

    job_id: int
    status: JobStatus | None
    changed: bool
    command: Literal["tobekilled"] | None = None
    error: str | None = None
    status_code: int = 200


class WorkerReport(RequestBody):
    """What a pilot says about the node it runs on (PanDA's worker-node report)."""

    pilot_id: str = Field(min_length=1, max_length=256)
    worker_id: int | None = Field(None, ge=1, le=MAX_ID)
    node: str = Field(max_length=256)
    cores: int | None = Field(None, ge=0, le=MAX_ID)
    memory_mb: int | None = Field(None, ge=0, le=MAX_ID)
    gpus: list[dict[str, Any]] = Field(default_factory=list, max_length=64)
