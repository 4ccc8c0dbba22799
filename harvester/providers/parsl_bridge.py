"""The ``parsl`` provider: any batch system one of Parsl's execution providers reaches.

A queue names a Parsl provider class and a launcher, and their options::

    [queues.ANALY_PBS]
    provider = "parsl"
    [queues.ANALY_PBS.provider_options]
    provider = "PBSProProvider"
    launcher = "SingleNodeLauncher"
    options = { queue = "workq", account = "hep", scheduler_options = "#PBS -l place=free" }

hpcaf's submitter, monitor and sweeper then drive that provider through
Parsl's own ``submit``/``status``/``cancel``: one Parsl job per hpcaf worker,
one pilot per node of it. Parsl's job states map to worker states through
:data:`PARSL_STATES`. Names come from the explicit tables below, never from an
import of a string a user typed, and a name or option Parsl does not know stops
the harvester at start with the queue and the field.

The queue's slot resources fill the Parsl options the class takes and the user
did not set (``walltime``, ``cores_per_node``, ``mem_per_node``), so a queue
means the same slot whichever provider serves it. Parsl is imported only when
such a queue exists (``pip install hpcaf[parsl]``).

Parsl providers keep the jobs they submitted in memory (their ``resources``
table). After a harvester restart, :meth:`ParslProvider.track` enters the
existing workers into that table again, in the layout Parsl's providers share
(``job_id`` and ``status``; for ``LocalProvider`` also the process id and the
script path), so the cluster providers ask their batch system about them
again; a worker the provider still cannot follow is reported ``missed``.
"""

from __future__ import annotations

import importlib
import inspect
import math
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from harvester.errors import ConfigError, ProviderError
from harvester.providers.base import BatchStatus, Provider, WorkerResources, map_native_state
from protocol.states import WorkerStatus

PARSL_PROVIDERS: dict[str, tuple[str, str]] = {
    "LocalProvider": ("parsl.providers", "LocalProvider"),
    "SlurmProvider": ("parsl.providers", "SlurmProvider"),
    "PBSProProvider": ("parsl.providers", "PBSProProvider"),
    "TorqueProvider": ("parsl.providers", "TorqueProvider"),
    "LSFProvider": ("parsl.providers", "LSFProvider"),
    "GridEngineProvider": ("parsl.providers", "GridEngineProvider"),
    "CondorProvider": ("parsl.providers", "CondorProvider"),
    "KubernetesProvider": ("parsl.providers", "KubernetesProvider"),
    "AWSProvider": ("parsl.providers", "AWSProvider"),
    "GoogleCloudProvider": ("parsl.providers", "GoogleCloudProvider"),
    "AzureProvider": ("parsl.providers", "AzureProvider"),
}
"""The Parsl execution providers a queue may name."""

PARSL_LAUNCHERS: dict[str, tuple[str, str]] = {
    "SingleNodeLauncher": ("parsl.launchers", "SingleNodeLauncher"),
    "SimpleLauncher": ("parsl.launchers", "SimpleLauncher"),
    "SrunLauncher": ("parsl.launchers", "SrunLauncher"),
    "SrunMPILauncher": ("parsl.launchers", "SrunMPILauncher"),
    "MpiExecLauncher": ("parsl.launchers", "MpiExecLauncher"),
    "MpiRunLauncher": ("parsl.launchers", "MpiRunLauncher"),
    "AprunLauncher": ("parsl.launchers", "AprunLauncher"),
    "JsrunLauncher": ("parsl.launchers", "JsrunLauncher"),
    "GnuParallelLauncher": ("parsl.launchers", "GnuParallelLauncher"),
    "WrappedLauncher": ("parsl.launchers", "WrappedLauncher"),
}
"""The Parsl launchers a queue may name (how the command starts on the job's nodes)."""

PARSL_STATES: dict[str, WorkerStatus] = {
    "PENDING": WorkerStatus.SUBMITTED,
    "HELD": WorkerStatus.SUBMITTED,
    "RUNNING": WorkerStatus.RUNNING,
    "COMPLETED": WorkerStatus.FINISHED,
    "FAILED": WorkerStatus.FAILED,
    "TIMEOUT": WorkerStatus.FAILED,
    "CANCELLED": WorkerStatus.CANCELLED,
    "SCALED_IN": WorkerStatus.CANCELLED,
    "MISSING": WorkerStatus.MISSED,
}
"""Parsl's ``JobState`` (by name) → worker state; ``UNKNOWN`` leaves the worker as it was."""


class ParslOptions(BaseModel):
    """``provider_options`` of a ``provider = "parsl"`` queue."""

    model_config = ConfigDict(extra="forbid")

    provider: str
    """A name of :data:`PARSL_PROVIDERS`."""
    launcher: str | None = None
    """A name of :data:`PARSL_LAUNCHERS` (default: the provider's own default)."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the provider class (Parsl's documentation lists them)."""
    launcher_options: dict[str, Any] = Field(default_factory=dict)
    polling_interval_s: float | None = Field(None, gt=0)
    """Default: the provider's ``status_polling_interval``."""


def _load(table: dict[str, tuple[str, str]], name: str) -> Any:
    module, attribute = table[name]
    return getattr(importlib.import_module(module), attribute)


def _unknown_keywords(cls: Any, given: dict[str, Any]) -> list[str]:
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return []
    return sorted(set(given) - (set(parameters) - {"self"}))


def _slot_defaults(cls: Any, resources: WorkerResources) -> dict[str, Any]:
    """The queue's slot, in the options the Parsl class takes."""
    parameters = inspect.signature(cls.__init__).parameters
    hours, rest = divmod(resources.walltime_s, 3600)
    defaults: dict[str, Any] = {
        "walltime": f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}",
        "cores_per_node": resources.cores,
        "mem_per_node": max(1, math.ceil(resources.memory_mb / 1024)),
        "nodes_per_block": 1,
        # KubernetesProvider: the pod's requests and limits
        "init_cpu": resources.cores,
        "max_cpu": resources.cores,
        "init_mem": f"{resources.memory_mb}Mi",
        "max_mem": f"{resources.memory_mb}Mi",
    }
    return {k: v for k, v in defaults.items() if k in parameters}


def build_parsl_provider(queue_name: str, options: ParslOptions, slot: WorkerResources) -> Any:
    """The Parsl provider object of a queue; a :class:`ConfigError` naming the queue and
    the field for a name or an option Parsl does not know."""
    try:
        importlib.import_module("parsl")
    except ImportError as exc:
        raise ConfigError(
            f"queue {queue_name}: field provider: 'parsl' needs Parsl installed "
            "(pip install 'hpcaf[parsl]')"
        ) from exc
    if options.provider not in PARSL_PROVIDERS:
        raise ConfigError(
            f"queue {queue_name}: field provider_options.provider: {options.provider!r} is "
            f"not one of Parsl's providers ({', '.join(PARSL_PROVIDERS)})"
        )
    if options.launcher is not None and options.launcher not in PARSL_LAUNCHERS:
        raise ConfigError(
            f"queue {queue_name}: field provider_options.launcher: {options.launcher!r} is "
            f"not one of Parsl's launchers ({', '.join(PARSL_LAUNCHERS)})"
        )
    if options.launcher_options and options.launcher is None:
        raise ConfigError(
            f"queue {queue_name}: field provider_options.launcher_options: given without "
            "a launcher to take them (name one in provider_options.launcher)"
        )
    try:
        cls = _load(PARSL_PROVIDERS, options.provider)
    except ImportError as exc:  # an optional dependency of that provider (kubernetes, boto3…)
        raise ConfigError(
            f"queue {queue_name}: field provider_options.provider: Parsl's "
            f"{options.provider} cannot be loaded here: {exc}"
        ) from exc
    unknown = _unknown_keywords(cls, options.options)
    if unknown:
        raise ConfigError(
            f"queue {queue_name}: field provider_options.options.{unknown[0]}: "
            f"{options.provider} takes no option {unknown[0]!r}"
        )
    kwargs = {**_slot_defaults(cls, slot), **options.options}
    if options.launcher is not None:
        launcher_cls = _load(PARSL_LAUNCHERS, options.launcher)
        bad = _unknown_keywords(launcher_cls, options.launcher_options)
        if bad:
            raise ConfigError(
                f"queue {queue_name}: field provider_options.launcher_options.{bad[0]}: "
                f"{options.launcher} takes no option {bad[0]!r}"
            )
        try:
            kwargs["launcher"] = launcher_cls(**options.launcher_options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"queue {queue_name}: field provider_options.launcher_options: {exc}"
            ) from exc
    try:
        return cls(**kwargs)
    except Exception as exc:  # the provider refused its options (a bad value, no kubeconfig…)
        raise ConfigError(
            f"queue {queue_name}: field provider_options.options: {options.provider} "
            f"refused them: {type(exc).__name__}: {exc}"
        ) from exc


class ParslProvider(Provider):
    """hpcaf's provider interface over one Parsl execution provider.

    Every call into Parsl holds one lock: the submitter and the monitor run in
    different threads, and Parsl's providers update their job table unguarded.
    """

    label = "parsl"

    def __init__(self, parsl_provider: Any, polling_interval_s: float | None = None) -> None:
        self.parsl = parsl_provider
        self._polling_interval_s = polling_interval_s
        self._lock = threading.Lock()

    @property
    def polling_interval_s(self) -> float:
        if self._polling_interval_s is not None:
            return self._polling_interval_s
        return float(getattr(self.parsl, "status_polling_interval", 5))

    def submit(self, command: str, resources: WorkerResources, name: str, workdir: Path) -> str:
        workdir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self.parsl.script_dir = str(workdir)  # Parsl writes the job's script there
            try:
                job_id = self.parsl.submit(command, 1, job_name=name)
            except Exception as exc:  # Parsl's SubmitException and its kin
                raise ProviderError(f"Parsl {type(self.parsl).__name__}: {exc}") from exc
        if job_id is None:
            raise ProviderError(f"Parsl {type(self.parsl).__name__} is at capacity")
        return str(job_id)

    def status(self, batch_ids: list[str]) -> dict[str, BatchStatus]:
        with self._lock:
            known = [b for b in batch_ids if b in self._table()]
            answers = self.parsl.status(known) if known else []
        result = {
            b: BatchStatus(WorkerStatus.MISSED, "untracked", message="Parsl does not know it")
            for b in batch_ids
        }
        for batch_id, job_status in zip(known, answers, strict=True):
            native = job_status.state.name
            status = map_native_state(PARSL_STATES, native, provider="parsl")
            result[batch_id] = BatchStatus(
                status,
                native,
                exit_code=job_status.exit_code,
                message=job_status.message,
            )
        return result

    def cancel(self, batch_ids: list[str]) -> None:
        with self._lock:
            known = [b for b in batch_ids if b in self._table()]
            if known:
                self.parsl.cancel(known)

    def track(self, batch_id: str, workdir: Path) -> None:
        """Enter an existing worker into Parsl's job table (after a harvester restart)."""
        from parsl.jobs.states import JobState, JobStatus

        with self._lock:
            table = self._table()
            if batch_id in table:
                return
            entry: dict[str, Any] = {"job_id": batch_id, "status": JobStatus(JobState.PENDING)}
            if type(self.parsl).__name__ == "LocalProvider":
                scripts = sorted(workdir.glob("*.sh"))
                if not scripts or not batch_id.isdigit():
                    return  # nothing to follow it by: reported missed
                entry.update({"remote_pid": int(batch_id), "script_path": str(scripts[-1])})
                entry["status"] = JobStatus(JobState.RUNNING)
            table[batch_id] = entry

    def _table(self) -> dict[str, Any]:
        table: dict[str, Any] = getattr(self.parsl, "resources", {})
        return table
