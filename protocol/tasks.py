"""Tasks: a submission (panda-client's task parameters), its sharing, and a task as shown."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator

from protocol.bodies import RequestBody
from protocol.files import InputFile
from protocol.states import TaskStatus

MAX_EXEC_LENGTH = 65_536


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
