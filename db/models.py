"""The SQLAlchemy 2.0 models of hpcaf's queue.

One job row is one *attempt* (PanDA's PandaID): a retry adds a row with the
same ``task_id``/``job_index`` and ``attempt_nr + 1``, and the superseded row
ends ``closed``. The current status lives on each row; every change is also
appended to :class:`StateHistory`.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from protocol.states import JobStatus, TaskStatus, WorkerStatus
from protocol.tasks import TaskParameters


def utcnow() -> datetime:
    """Timezone-aware now; every timestamp in the database is UTC."""
    return datetime.now(UTC)


class Role(enum.StrEnum):
    """What a token may do."""

    USER = "user"
    """Submits and manages its own tasks."""
    PILOT = "pilot"
    """Acquires and updates jobs; cannot submit."""
    ADMIN = "admin"
    """Everything, including queue changes and other users' tasks."""


class QueueStatus(enum.StrEnum):
    """Whether a queue gets new workers."""

    ONLINE = "online"
    OFFLINE = "offline"
    TEST = "test"


class EntityKind(enum.StrEnum):
    """What a :class:`StateHistory` row is about."""

    TASK = "task"
    JOB = "job"
    WORKER = "worker"


class FileKind(enum.StrEnum):
    """Why a file is registered."""

    INPUT = "input"
    OUTPUT = "output"
    LOG = "log"


def _enum(cls: type[enum.StrEnum], length: int = 16) -> Enum:
    """Store enums as their lowercase value in a portable VARCHAR."""
    return Enum(
        cls,
        native_enum=False,
        length=length,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class TZDateTime(TypeDecorator[datetime]):
    """UTC timestamps that come back timezone-aware on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    """Declarative base of every hpcaf table."""

    type_annotation_map = {dict[str, Any]: JSON, datetime: TZDateTime()}


class Token(Base):
    """An API token, stored only as its SHA-256."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[Role] = mapped_column(_enum(Role))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Queue(Base):
    """A PanDA queue: where and how jobs run. Its settings come from the config file."""

    __tablename__ = "queues"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    status: Mapped[QueueStatus] = mapped_column(_enum(QueueStatus))
    status_set_by_admin: Mapped[bool] = mapped_column(default=False)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    modified_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Task(Base):
    """One submission (PanDA's JEDI task, ``jediTaskID`` = ``id``)."""

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    owner: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[TaskStatus] = mapped_column(_enum(TaskStatus), index=True)
    kind: Mapped[str] = mapped_column(String(32), default="container")
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The parameters as submitted, under panda-client's names; written once, never changed.
    Read them through :attr:`parameters`; only the API echoes this document as it is."""
    image: Mapped[str] = mapped_column(String(256))
    """An image of the site's cache by name, or a registry reference (``docker://…``)."""
    image_digest: Mapped[str | None] = mapped_column(String(71), default=None)
    """The manifest digest a registry image was pinned to when the task first needed it:
    every job of the task runs exactly that image. NULL for cache images, and until then."""
    image_message: Mapped[str | None] = mapped_column(Text, default=None)
    """Why the registry image is not ready yet (the registry's own words); NULL once pulled."""
    architecture: Mapped[str | None] = mapped_column(String(256), default=None)
    site: Mapped[str | None] = mapped_column(String(128), default=None)
    """The queues the task may run on, comma-separated (``--site A,B``); None: any. Read
    it through :attr:`sites`."""
    excluded_sites: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    """Queues brokerage must not choose (``excludedSite``)."""
    cores: Mapped[int] = mapped_column(Integer, server_default="1")
    """Cores per job (``TaskParameters.cores``); each job row takes it."""
    nodes: Mapped[int] = mapped_column(Integer, server_default="1")
    """Nodes per job (``TaskParameters.nodes``): above 1, a gang-scheduled job whose
    ranks run on every node of one allocation, ``cores`` ranks per node."""
    memory_mb: Mapped[int] = mapped_column(Integer, server_default="0")
    """MiB per job; 0 means whatever the queue's slot offers."""
    walltime_s: Mapped[int] = mapped_column(Integer, server_default="0")
    """Seconds per job; 0 means up to the queue's maximum walltime."""
    gpu_request: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True), default=None
    )
    """The GPU the jobs need, parsed from ``architecture`` at submission
    (``harvester.architecture.GpuRequest.to_document``); NULL for CPU jobs."""
    out_ds: Mapped[str] = mapped_column(String(256))
    n_jobs: Mapped[int] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer, default=1000)
    max_attempt: Mapped[int] = mapped_column(Integer, default=3)
    error_dialog: Mapped[str | None] = mapped_column(Text, default=None)
    readers: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    """Users the owner shared the task with: they may read its logs, outputs and results."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    modified_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)

    jobs: Mapped[list[Job]] = relationship(back_populates="task", lazy="raise_on_sql")

    @property
    def sites(self) -> tuple[str, ...]:
        """The queues named by ``site``; empty: brokerage may choose any."""
        return tuple(self.site.split(",")) if self.site else ()

    @property
    def parameters(self) -> TaskParameters:
        """The task's parameters, parsed from :attr:`params` once per row object.

        The one place the stored document is read: every field and its default are
        :class:`~protocol.tasks.TaskParameters`'. The parameters never change after
        submission, so the parsed form is kept with the object (not in a mapped column).

        ``jobParameters`` is taken as stored, not checked again: it was checked when
        the task was submitted, it can hold thousands of entries, and the pilots'
        claims and reports read the parameters of their task on every call.
        """
        parsed = self.__dict__.get(_PARSED_PARAMETERS)
        if parsed is None:
            document = dict(self.params)
            per_job = document.pop("jobParameters", None)
            parsed = TaskParameters.model_validate(document).model_copy(
                update={"jobParameters": per_job}
            )
            self.__dict__[_PARSED_PARAMETERS] = parsed
        return parsed


_PARSED_PARAMETERS = "_parsed_parameters"
"""Where :attr:`Task.parameters` keeps its parsed form on the instance (SQLAlchemy ignores
unmapped keys of an instance's ``__dict__``)."""


class Job(Base):
    """One attempt of one unit of work of a task (PanDA's ``PandaID`` = ``id``)."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_task_index", "task_id", "job_index", "attempt_nr", unique=True),
        Index("ix_jobs_heartbeat", "status", "heartbeat_at"),
        Index("ix_jobs_worker", "worker_id"),
        Index("ix_jobs_queue_status", "queue", "status"),
        Index("ix_jobs_task_status", "task_id", "status"),
        Index("ix_jobs_created", "created_at"),
        Index("ix_jobs_ended", "ended_at"),
        Index("ix_jobs_error", "pilot_error_code"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    job_index: Mapped[int] = mapped_column(Integer)
    attempt_nr: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus))
    queue: Mapped[str | None] = mapped_column(String(128), default=None)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    cores: Mapped[int] = mapped_column(Integer, default=1)
    """Cores per node (one rank each when ``nodes`` is above 1)."""
    nodes: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    """Nodes of the one allocation the job runs on."""
    memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    """MiB; 0 means whatever the queue's slot offers."""
    gpus: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """GPUs the job needs on its node."""
    walltime_s: Mapped[int] = mapped_column(Integer, default=0)
    """Seconds; 0 means up to the queue's maximum walltime."""
    priority: Mapped[int] = mapped_column(Integer, default=1000)
    pilot_id: Mapped[str | None] = mapped_column(String(256), default=None)
    worker_id: Mapped[int | None] = mapped_column(ForeignKey("workers.id"), default=None)
    node: Mapped[str | None] = mapped_column(String(256), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    pilot_error_code: Mapped[int | None] = mapped_column(Integer, default=None)
    pilot_error_diag: Mapped[str | None] = mapped_column(Text, default=None)
    brokerage_message: Mapped[str | None] = mapped_column(Text, default=None)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    modified_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)

    task: Mapped[Task] = relationship(back_populates="jobs", lazy="raise_on_sql")


# The claim's order (priority first, then oldest) read straight off the index.
Index("ix_jobs_claim", Job.status, Job.queue, Job.nodes, Job.priority.desc(), Job.id)


class Worker(Base):
    """One batch slot running one pilot (Harvester's work spec)."""

    __tablename__ = "workers"
    __table_args__ = (Index("ix_workers_queue_status", "queue", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    queue: Mapped[str] = mapped_column(String(128))
    provider: Mapped[str] = mapped_column(String(32))
    batch_id: Mapped[str | None] = mapped_column(String(128), default=None)
    status: Mapped[WorkerStatus] = mapped_column(_enum(WorkerStatus))
    diagnostics: Mapped[str | None] = mapped_column(Text, default=None)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    workdir: Mapped[str | None] = mapped_column(String(1024), default=None)
    node: Mapped[str | None] = mapped_column(String(256), default=None)
    nodes: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    """Nodes of the worker's allocation: above 1, it holds the jobs of that many nodes."""
    submitted_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    modified_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    swept_at: Mapped[datetime | None] = mapped_column(default=None)


class StateHistory(Base):
    """Append-only record of every state change: never updated, never deleted."""

    __tablename__ = "state_history"
    __table_args__ = (Index("ix_history_entity", "entity", "entity_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    entity: Mapped[EntityKind] = mapped_column(_enum(EntityKind))
    entity_id: Mapped[int] = mapped_column(Integer)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    actor: Mapped[str | None] = mapped_column(String(256), default=None)


class File(Base):
    """A registered file: content-addressed by sha256 in the file store."""

    __tablename__ = "files"
    __table_args__ = (
        UniqueConstraint("dataset", "name", name="uq_files_dataset_name"),
        Index("ix_files_task", "task_id"),
        Index("ix_files_sha256", "sha256"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(String(512))
    dataset: Mapped[str | None] = mapped_column(String(256), default=None)
    owner: Mapped[str] = mapped_column(String(64))
    kind: Mapped[FileKind] = mapped_column(_enum(FileKind))
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id"), default=None)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ScanPoint(Base):
    """One point of a steered task (a hyperparameter scan or an adaptive fit scan).

    The point is created in the same transaction as the job that evaluates it
    (``job_index == point_index``), so a restarted harvester neither loses nor
    repeats a point; its state is the state of that job's newest attempt.
    """

    __tablename__ = "scan_points"
    __table_args__ = (UniqueConstraint("task_id", "point_index", name="uq_scan_points_task_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    point_index: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    metric: Mapped[float | None] = mapped_column(Float, default=None)
    """The value the scan optimizes (or CLs_obs for an adaptive fit scan)."""
    results: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    """Everything the evaluation reported (its metrics.json, or the fit result)."""
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), default=None)
    """The attempt that produced ``metric``."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    evaluated_at: Mapped[datetime | None] = mapped_column(default=None)


class Lease(Base):
    """A named duty held by one harvester instance until ``expires_at`` (Harvester's
    lock table): who submits a queue's workers, who runs the agents that act on all tasks."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(160), primary_key=True)
    holder: Mapped[str] = mapped_column(String(256))
    acquired_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
