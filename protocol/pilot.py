"""What a pilot and the harvester say: taking jobs, heartbeats, job and node reports."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, Field

from protocol.bodies import MAX_ID, RequestBody
from protocol.files import InputFile, OutputFile
from protocol.states import JobStatus


class AcquireRequest(RequestBody):
    queue: str = Field(max_length=128)
    pilot_id: str = Field(min_length=1, max_length=256)
    n_jobs: int = Field(1, ge=1, le=1000)
    worker_id: int | None = Field(None, ge=1, le=MAX_ID)
    node: str | None = Field(None, max_length=256)
    cores: int | None = Field(None, ge=1, le=MAX_ID)
    memory_mb: int | None = Field(None, ge=1, le=MAX_ID)
    gpus: int = Field(0, ge=0, le=64, description="GPUs the pilot's node offers")
    nodes: int = Field(
        1, ge=1, le=1024, description="nodes of the pilot's allocation: it takes jobs of as many"
    )
    wait_s: float = Field(
        0.0,
        ge=0,
        le=30,
        description="hold an empty answer up to this long, until a job of the queue is "
        "activated (long poll)",
    )


class ContainerSpec(BaseModel):
    """How the job's queue runs containers: its runtime, network, binds and options.

    The defaults are what a pilot assumed when the server left a key out.
    """

    runtime: str = "auto"
    """``auto`` (the first of apptainer, singularity, bwrap installed) or one of them."""
    allow_network: bool = False
    binds: list[str] = Field(default_factory=list)
    """``/src``, ``/src:/dst`` or ``/src:/dst:rw``."""
    options: list[str] = Field(default_factory=list)
    """Extra options for the runtime's command line."""


class JobSpec(BaseModel):
    """Everything a pilot needs to run one job.

    The server always fills every field. The defaults are those the pilot
    applied before it read the spec into this model (no image path: the image
    is not found; no inputs, outputs or environment; one core; a 30 s
    heartbeat), so a spec without them runs as it did then.
    """

    job_id: int
    task_id: int
    job_index: int
    attempt_nr: int
    owner: str
    out_ds: str
    image: str
    image_path: str | None = None
    image_environment: dict[str, str] = Field(default_factory=dict)
    transform: str
    exec: str
    transform_args: dict[str, Any] = Field(default_factory=dict)
    job_parameters: dict[str, Any] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    outputs: list[str] = Field(default_factory=list)
    inputs: list[InputFile] = Field(default_factory=list)
    sandbox: InputFile | None = None
    """The user's work directory (a gzipped tar) to unpack into the work dir first."""
    cores: int = 1
    """Cores per node; for a job of several nodes, also its ranks per node."""
    nodes: int = 1
    """Nodes of the job's allocation: above 1, the pilot starts ``nodes * cores`` ranks,
    one container each, on every node of its allocation (``pilot/ranks.py``)."""
    memory_mb: int
    walltime_s: int
    gpus: int = 0
    container: ContainerSpec = Field(default_factory=ContainerSpec)
    heartbeat_interval_s: float = 30.0


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
    started_at: AwareDatetime | None = None
    """With a final state: when the payload started, for a job that ended before its
    ``running`` report was due (a short call on a warm worker). The server records the
    job's ``running`` state from it, with the end, in one request."""


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
