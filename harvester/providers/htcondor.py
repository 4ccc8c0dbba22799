"""The HTCondor provider, through the ``htcondor2`` Python bindings (no shell-outs).

A worker is one HTCondor job whose executable is the rendered pilot script
(shared file system, as for Slurm). The submit description is an
``htcondor2.Submit`` built from the queue; everything that talks to a schedd
goes through the small :class:`ScheddClient` protocol, whose real
implementation wraps ``htcondor2.Schedd`` and which tests replace with a fake,
since no HTCondor pool can run on the machines the tests run on.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from harvester.errors import ProviderError
from harvester.providers.base import BatchStatus, Provider, WorkerResources, map_native_state
from protocol.states import WorkerStatus

log = logging.getLogger(__name__)

HTCONDOR_STATES: dict[str, WorkerStatus] = {
    "1": WorkerStatus.SUBMITTED,  # Idle
    "2": WorkerStatus.RUNNING,  # Running
    "3": WorkerStatus.CANCELLED,  # Removed
    "4": WorkerStatus.FINISHED,  # Completed (a non-zero ExitCode makes it failed)
    "5": WorkerStatus.FAILED,  # Held: removed by hpcaf, reported with its HoldReason
    "6": WorkerStatus.RUNNING,  # Transferring Output
    "7": WorkerStatus.RUNNING,  # Suspended
}
"""HTCondor ``JobStatus`` codes → worker states."""

PROJECTION = [
    "ClusterId",
    "ProcId",
    "JobStatus",
    "ExitCode",
    "ExitBySignal",
    "ExitSignal",
    "HoldReason",
    "RemoveReason",
]

SCRIPT_TEMPLATE = """\
#!/bin/bash
# hpcaf worker {name}: one pilot in one HTCondor slot
{environment}
cd "{workdir}" || exit 1
{command}
"""


class HTCondorOptions(BaseModel):
    """``provider_options`` of an HTCondor queue."""

    model_config = ConfigDict(extra="forbid")

    schedd: str | None = None
    """Schedd name (default: the local schedd)."""
    collector: str | None = None
    """Collector to locate ``schedd`` with (default: the configured one)."""
    universe: str = "vanilla"
    requirements: str | None = None
    require_gpus: str | None = None
    """GPU constraint expression, e.g. ``Capability >= 8.0 && GlobalMemoryMb >= 40000``."""
    accounting_group: str | None = None
    extra_attributes: dict[str, str] = Field(default_factory=dict)
    """Further submit commands or ``+Attribute`` lines, written as given."""
    environment: dict[str, str] = Field(default_factory=dict)
    polling_interval_s: float = Field(10.0, gt=0)


class ScheddClient(Protocol):
    """The only calls hpcaf makes to a schedd."""

    def submit(self, description: Any, count: int) -> int:
        """Queue ``count`` jobs of the description; returns the cluster id."""

    def query(self, constraint: str, projection: Sequence[str]) -> list[Mapping[str, Any]]:
        """Ads of jobs in the queue."""

    def history(
        self, constraint: str, projection: Sequence[str], match: int
    ) -> list[Mapping[str, Any]]:
        """Ads of jobs that left the queue."""

    def remove(self, job_ids: list[str], reason: str) -> None:
        """Remove jobs (``cluster.proc``)."""


class BindingsSchedd:
    """:class:`ScheddClient` over the real ``htcondor2.Schedd``."""

    def __init__(self, options: HTCondorOptions) -> None:
        import htcondor2

        self._htcondor = htcondor2
        if options.schedd:
            collector = (
                htcondor2.Collector(options.collector)
                if options.collector
                else (htcondor2.Collector())
            )
            ad = collector.locate(htcondor2.DaemonType.Schedd, options.schedd)
            self._schedd = htcondor2.Schedd(ad)
        else:
            self._schedd = htcondor2.Schedd()

    def submit(self, description: Any, count: int) -> int:
        return int(self._schedd.submit(description, count=count).cluster())

    def query(self, constraint: str, projection: Sequence[str]) -> list[Mapping[str, Any]]:
        return list(self._schedd.query(constraint=constraint, projection=list(projection)))

    def history(
        self, constraint: str, projection: Sequence[str], match: int
    ) -> list[Mapping[str, Any]]:
        return list(self._schedd.history(constraint, list(projection), match=match))

    def remove(self, job_ids: list[str], reason: str) -> None:
        self._schedd.act(self._htcondor.JobAction.Remove, job_ids, reason=reason)


class HTCondorProvider(Provider):
    """Workers as HTCondor jobs."""

    label = "htcondor"

    def __init__(
        self,
        options: HTCondorOptions,
        schedd_factory: Callable[[HTCondorOptions], ScheddClient] | None = None,
    ) -> None:
        self.options = options
        self._schedd_factory = schedd_factory or BindingsSchedd
        self._schedd: ScheddClient | None = None

    @property
    def polling_interval_s(self) -> float:
        return self.options.polling_interval_s

    @property
    def schedd(self) -> ScheddClient:
        if self._schedd is None:
            try:
                self._schedd = self._schedd_factory(self.options)
            except Exception as exc:
                raise ProviderError(f"cannot reach the HTCondor schedd: {exc}") from exc
        return self._schedd

    def submit_description(
        self, script: Path, resources: WorkerResources, name: str, workdir: Path
    ) -> Any:
        """The ``htcondor2.Submit`` for one worker."""
        import htcondor2

        o = self.options
        commands: dict[str, str] = {
            "universe": o.universe,
            "executable": str(script),
            "transfer_executable": "false",
            "should_transfer_files": "NO",
            "initialdir": str(workdir),
            "output": str(workdir / "stdout"),
            "error": str(workdir / "stderr"),
            "log": str(workdir / "condor.log"),
            "request_cpus": str(resources.cores),
            "request_memory": f"{resources.memory_mb}MB",
            "+MaxRuntime": str(resources.walltime_s),
            "+hpcafWorker": f'"{name}"',
            "batch_name": name,
        }
        if resources.gpus:
            commands["request_gpus"] = str(resources.gpus)
            if o.require_gpus:
                commands["require_gpus"] = o.require_gpus
        if o.requirements:
            commands["requirements"] = o.requirements
        if o.accounting_group:
            commands["accounting_group"] = o.accounting_group
        commands.update(o.extra_attributes)
        return htcondor2.Submit(commands)

    def render_script(self, command: str, name: str, workdir: Path) -> str:
        environment = "\n".join(
            f"export {key}={shlex.quote(value)}" for key, value in self.options.environment.items()
        )
        return SCRIPT_TEMPLATE.format(
            name=name, environment=environment, workdir=workdir, command=command
        )

    def submit(self, command: str, resources: WorkerResources, name: str, workdir: Path) -> str:
        workdir.mkdir(parents=True, exist_ok=True)
        script = workdir / "pilot.sh"
        script.write_text(self.render_script(command, name, workdir))
        script.chmod(0o755)
        description = self.submit_description(script, resources, name, workdir)
        try:
            cluster = self.schedd.submit(description, 1)
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(f"HTCondor refused the submission: {exc}") from exc
        return f"{cluster}.0"

    def status(self, batch_ids: list[str]) -> dict[str, BatchStatus]:
        if not batch_ids:
            return {}
        constraint = " || ".join(_match(b) for b in batch_ids)
        try:
            ads = {_id(ad): ad for ad in self.schedd.query(constraint, PROJECTION)}
            missing = [b for b in batch_ids if b not in ads]
            if missing:
                gone = " || ".join(_match(b) for b in missing)
                for ad in self.schedd.history(gone, PROJECTION, len(missing)):
                    ads.setdefault(_id(ad), ad)
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(f"HTCondor status query failed: {exc}") from exc
        result: dict[str, BatchStatus] = {}
        held: list[str] = []
        for batch_id in batch_ids:
            found = ads.get(batch_id)
            if found is None:
                result[batch_id] = BatchStatus(
                    WorkerStatus.MISSED,
                    "unknown",
                    message=f"HTCondor job {batch_id} is in neither the queue nor the history",
                )
                continue
            result[batch_id] = self.from_ad(found)
            if str(found.get("JobStatus")) == "5":
                held.append(batch_id)
        if held:
            self.cancel(held)
        return result

    @staticmethod
    def from_ad(ad: Mapping[str, Any]) -> BatchStatus:
        native = str(ad.get("JobStatus"))
        status = map_native_state(HTCONDOR_STATES, native, provider="htcondor")
        code = ad.get("ExitCode")
        if ad.get("ExitBySignal"):
            code = 128 + int(ad.get("ExitSignal") or 0)
        message = None
        if status is WorkerStatus.FINISHED and code not in (None, 0):
            status = WorkerStatus.FAILED
            message = f"pilot exit code {code}"
        elif native == "5":
            message = f"held: {ad.get('HoldReason') or 'no reason given'}"
        elif status is WorkerStatus.CANCELLED:
            message = f"removed: {ad.get('RemoveReason') or 'no reason given'}"
        return BatchStatus(
            status, native, exit_code=int(code) if code is not None else None, message=message
        )

    def cancel(self, batch_ids: list[str]) -> None:
        if not batch_ids:
            return
        try:
            self.schedd.remove(batch_ids, "removed by hpcaf")
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(f"HTCondor remove failed: {exc}") from exc


def _match(batch_id: str) -> str:
    cluster, _, proc = batch_id.partition(".")
    return f"(ClusterId == {int(cluster)} && ProcId == {int(proc or 0)})"


def _id(ad: Mapping[str, Any]) -> str:
    return f"{ad.get('ClusterId')}.{ad.get('ProcId')}"
