"""Tasks: a submission (panda-client's task parameters), its sharing, and a task as shown."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from protocol.bodies import RequestBody
from protocol.files import InputFile
from protocol.states import TaskStatus

MAX_EXEC_LENGTH = 65_536


MAX_NODES = 1024
"""The most nodes one job may ask for."""


class TaskParameters(BaseModel):
    """A task's parameters: what pcontainer, pfit and phpo send, and what the harvester
    keeps and reads back. Every field and its default is stated here, once.

    The request body is :class:`TaskCreate` (these fields, checked strictly). The
    harvester stores them on the task row as JSON under the wire names
    (``model_dump(by_alias=True)``) and reads them back only through
    ``db.models.Task.parameters``, which parses the row's JSON into this model once
    per row object: no code restates a default with ``params.get(name, default)``.
    Stored rows are parsed with these same rules, so a rule made stricter later needs
    a migration of the rows it would refuse.

    The names are panda-client's, PanDA's vocabulary, except for the three resources
    that every later stage names alike (the job row, brokerage, the pilot's job
    spec): ``cores``, ``memory_mb`` and ``walltime_s``, whose panda-client names
    (``coreCount``, ``ramCount``, ``maxWalltime``) are their aliases on the wire.
    ``transformArgs``, ``jobParameters`` and ``steering`` stay free-form dicts: the
    transform reads the first two, and a scan's steering is checked and normalised
    at submission by ``harvester.services.scan_submission``.
    """

    model_config = ConfigDict(frozen=True)

    taskName: str | None = Field(None, max_length=256)
    containerImage: str = Field(min_length=1, max_length=256)
    exec: str = Field("", max_length=MAX_EXEC_LENGTH)
    outDS: str = Field(max_length=256)
    outputs: list[str] = Field(default_factory=list, max_length=100)
    inputs: list[InputFile] = Field(default_factory=list, max_length=100)
    sandbox: InputFile | None = None
    """The user's work directory, a gzipped tar in the file store (``pcontainer
    --workDir``); unpacked into each job's work dir before the inputs."""
    site: str | None = Field(None, max_length=128)
    excludedSite: list[str] = Field(default_factory=list, max_length=100)
    architecture: str | None = Field(None, max_length=256)
    nJobs: int = Field(1, ge=1)
    priority: int = Field(1000, ge=0, le=2000)
    maxAttempt: int = Field(3, ge=1, le=20)
    cores: int = Field(1, ge=1, le=1024, alias="coreCount")
    """Cores per job. One name from the submission to the payload:

    ``pcontainer --nCore`` / ``phpo --nCore`` (panda-client's option) → ``coreCount`` on
    the wire (panda-client's parameter, this field's alias) → ``cores`` here → the
    task's and each job's ``cores`` column (``db.models``; brokerage compares it with a
    queue's ``cores`` per slot, the claim with the pilot's ``AcquireRequest.cores``) →
    ``JobSpec.cores`` (``protocol.pilot``) → the pilot sets ``OMP_NUM_THREADS`` and the
    other BLAS thread variables (``pilot.job.THREAD_VARIABLES``) to it in the container.
    """
    nodes: int = Field(1, ge=1, le=MAX_NODES, alias="nNodes")
    """Nodes per job (``pcontainer --nNodes``): above 1, one gang-scheduled allocation of
    that many nodes, with ``cores`` ranks on each (one container per rank); only queues
    whose ``maxNodes`` is at least this take it."""
    memory_mb: int | None = Field(
        None,
        ge=1,
        le=4_194_304,
        alias="ramCount",
        description="MiB per job (default: what the queue's slot has)",
    )
    walltime_s: int | None = Field(
        None,
        ge=60,
        le=30 * 86400,
        alias="maxWalltime",
        description="seconds per job (default: the queue's maximum)",
    )
    env: dict[str, str] = Field(default_factory=dict)
    transform: Literal["runcontainer", "pyhf_fit", "hpo_eval", "pyfunc"] = "runcontainer"
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


class TaskCreate(RequestBody, TaskParameters):
    """Task parameters as pcontainer sends them (panda-client names)."""


class TaskSubmitted(BaseModel):
    jediTaskID: int
    status: TaskStatus


class TaskChecked(BaseModel):
    """A dry run (``--noSubmit``): the task would be accepted as it is; nothing was stored."""

    accepted: bool = True
    nJobs: int
    site: str | None
    """The queues the task may run on (comma list; None: any)."""


class RetryChanges(RequestBody):
    """What ``pbook retry`` may change on the retried jobs (panda-client's names on the wire,
    as at submission); unset fields stay as they were."""

    memory_mb: int | None = Field(
        None, ge=1, le=4_194_304, alias="ramCount", description="MiB per job"
    )
    walltime_s: int | None = Field(
        None, ge=60, le=30 * 86400, alias="maxWalltime", description="seconds per job"
    )
    site: str | None = Field(None, max_length=128, description="queues, comma-separated; AUTO: any")


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
    image_digest: str | None = Field(
        None, description="the manifest digest a registry image was pinned to when pulled"
    )
    image_message: str | None = Field(
        None, description="why a registry image is not pulled yet (the registry's words)"
    )
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
