"""Queue definitions (PanDA queues) from the settings file, validated by pydantic.

A queue is a ``[queues.NAME]`` table. Harvester's camelCase names are used
for the worker caps (``maxWorkers``, ``nQueueLimitWorker``,
``maxNewWorkersPerCycle``); snake_case works too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from db.models import QueueStatus
from harvester.errors import ConfigError

ProviderName = Literal["local", "slurm", "htcondor", "parsl"]
RuntimeName = Literal["auto", "bwrap", "apptainer", "singularity"]


class GpuNode(BaseModel):
    """One kind of GPU node of a queue (a queue may list several)."""

    model_config = ConfigDict(extra="forbid")

    vendor: Literal["nvidia", "amd", "intel"] = "nvidia"
    model: str = Field(min_length=1, description="e.g. NVIDIA A100-SXM4-40GB")
    vram_mb: int = Field(ge=1)
    cuda: str | None = Field(None, pattern=r"^\d+(\.\d+)*$")
    driver: str | None = Field(None, pattern=r"^\d+(\.\d+)*$")
    microarchitecture: str | None = None


class QueueConfig(BaseModel):
    """One PanDA queue: where its workers run and what one slot offers."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,128}$")
    provider: ProviderName
    status: QueueStatus = QueueStatus.ONLINE
    cores: int = Field(1, ge=1, description="cores per slot")
    memory_mb: int = Field(2000, ge=1, description="memory per slot, MiB")
    walltime_s: int = Field(3600, ge=60, alias="maxWalltime", description="max walltime, s")
    gpus: int = Field(0, ge=0, description="GPUs per slot")
    max_nodes: int = Field(1, ge=1, le=1024, alias="maxNodes")
    """The largest allocation the queue gives one job (``pcontainer --nNodes``); above 1,
    its provider must start multi-node allocations (Slurm)."""
    gpu_nodes: list[GpuNode] = Field(default_factory=list)
    """The GPUs the queue's nodes have (vendor/model/uarch: any node; VRAM, CUDA,
    driver: every node must meet a job's minimum)."""
    max_workers: int = Field(1, ge=0, alias="maxWorkers")
    n_queue_limit_worker: int | None = Field(None, ge=0, alias="nQueueLimitWorker")
    max_new_workers_per_cycle: int = Field(10, ge=0, alias="maxNewWorkersPerCycle")
    jobs_per_pilot: int = Field(0, ge=0, description="0: as many as walltime allows")
    pack_jobs: bool = Field(True, alias="packJobs")
    """A pilot runs several jobs at once while their cores and memory fit its slot
    (whole nodes, many-core slots); false: one job at a time, whatever the slot."""
    container_runtime: RuntimeName = "auto"
    container_options: list[str] = Field(default_factory=list)
    allow_network: bool = False
    binds: list[str] = Field(default_factory=list)
    provider_options: dict[str, Any] = Field(default_factory=dict)
    pilot_options: list[str] = Field(default_factory=list)
    """Extra ``pilot`` arguments for this queue's workers (e.g. ``["--heartbeat", "60"]``)."""
    compile_cache: str | None = Field(None, alias="compileCache", min_length=1)
    """A folder on the site's shared filesystem where its pilots keep compilations
    (JAX), one folder per user: a model is compiled once per site, not per pilot."""
    messenger: Literal["http", "shared_fs"] = "http"
    """How the queue's pilots reach the harvester: HTTP, or files on a shared
    filesystem for compute nodes without a network (relayed on the edge node)."""
    messenger_dir: str | None = Field(None, alias="messengerDir", min_length=1)
    """With ``messenger = "shared_fs"``: the folder on the shared filesystem, seen at
    the same path by the harvester and the compute nodes."""
    allow_cpu_jobs: bool = False
    """A GPU queue that also takes CPU-only jobs."""

    @model_validator(mode="after")
    def _default_queue_limit(self) -> QueueConfig:
        if self.n_queue_limit_worker is None:
            self.n_queue_limit_worker = self.max_workers
        return self

    @model_validator(mode="after")
    def _multi_node_needs_slurm_and_network(self) -> QueueConfig:
        if self.max_nodes > 1:
            if self.provider != "slurm":
                raise ValueError(
                    f"maxNodes > 1 needs the slurm provider (this queue's is {self.provider})"
                )
            if not self.allow_network:
                raise ValueError(
                    "maxNodes > 1: the ranks of a multi-node job talk to each other over the "
                    "network; set allow_network = true"
                )
            if self.gpus:
                raise ValueError(
                    "maxNodes > 1 with gpus: GPUs are given to single-node jobs only (a "
                    "rank on another node would see the first node's devices)"
                )
        return self

    @model_validator(mode="after")
    def _messenger_needs_a_folder(self) -> QueueConfig:
        if self.messenger == "shared_fs":
            if self.messenger_dir is None:
                raise ValueError('messenger = "shared_fs" needs messenger_dir')
            if not self.messenger_dir.startswith("/"):
                raise ValueError("messenger_dir must be an absolute path")
        elif self.messenger_dir is not None:
            raise ValueError('messenger_dir is set but messenger is not "shared_fs"')
        return self

    @model_validator(mode="after")
    def _gpu_nodes_need_gpus(self) -> QueueConfig:
        if self.gpu_nodes and self.gpus < 1:
            raise ValueError("gpu_nodes are declared but gpus (per slot) is 0")
        return self

    @property
    def memory_per_core(self) -> int:
        """MiB a core of the slot brings: what a job that gives no memory books per core."""
        return max(1, self.memory_mb // self.cores)

    @property
    def queue_limit(self) -> int:
        return self.n_queue_limit_worker if self.n_queue_limit_worker is not None else 0


def parse_queues(document: dict[str, Any], *, node_cores: int | None = None) -> list[QueueConfig]:
    """Validate every ``[queues.NAME]`` table; an error names the queue and the field."""
    tables = document.get("queues", {})
    if not isinstance(tables, dict):
        raise ConfigError("'queues' must be a table of [queues.NAME] tables")
    queues: list[QueueConfig] = []
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"queue {name}: must be a table")
        try:
            queue = QueueConfig(name=name, **table)
        except ValidationError as exc:
            raise ConfigError(f"queue {name}: {_describe(exc)}") from exc
        if queue.provider == "local" and node_cores is not None and queue.cores > node_cores:
            raise ConfigError(
                f"queue {name}: field cores: {queue.cores} cores per slot but this node has "
                f"{node_cores}"
            )
        queues.append(queue)
    return queues


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(queue)"
        parts.append(f"field {field}: {err['msg']}")
    return "; ".join(parts)


def default_settings_text(cores: int | None = None) -> str:
    """The settings file written on first start: one local queue sized to this node."""
    cores = cores or os.cpu_count() or 1
    return f"""\
# hpcaf harvester settings. Environment variables HPCAF_* override [harvester].
[harvester]
# port = 8080
# heartbeat_timeout_s = 600

# One PanDA queue served by pilots started as local processes.
[queues.ANALY_LOCAL]
provider = "local"
cores = 1
memory_mb = 2000
maxWalltime = 3600
maxWorkers = {cores}
nQueueLimitWorker = {cores}
maxNewWorkersPerCycle = {cores}
container_runtime = "auto"
allow_network = false
"""


def ensure_settings_file(path: Path) -> bool:
    """Write the default settings file if there is none; True when written."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(default_settings_text())
    return True
