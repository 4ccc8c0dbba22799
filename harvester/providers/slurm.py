"""The Slurm provider: ``sbatch`` a rendered batch script, follow it, ``scancel`` it.

The script is a template plus ``#SBATCH`` directives from the queue's
configuration, testable as text without Slurm. Status comes from ``squeue``
for jobs in the queue and from ``scontrol``/``sacct`` for jobs that left it
(the accounting database, slurmdbd, as production sites run it; ``sacct -c``,
the job completion log, only where the site has no accounting storage); every
command runs through :func:`harvester.commands.run_command` with a timeout, so a
hung Slurm controller never blocks the harvester.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from harvester.commands import CommandError, run_command
from harvester.errors import ProviderError
from harvester.providers.base import BatchStatus, Provider, WorkerResources, map_native_state
from protocol.states import WorkerStatus

log = logging.getLogger(__name__)

SLURM_STATES: dict[str, WorkerStatus] = {
    "PENDING": WorkerStatus.SUBMITTED,
    "CONFIGURING": WorkerStatus.SUBMITTED,
    "REQUEUED": WorkerStatus.SUBMITTED,
    "REQUEUE_HOLD": WorkerStatus.SUBMITTED,
    "REQUEUE_FED": WorkerStatus.SUBMITTED,
    "RESV_DEL_HOLD": WorkerStatus.SUBMITTED,
    "RUNNING": WorkerStatus.RUNNING,
    "COMPLETING": WorkerStatus.RUNNING,
    "SUSPENDED": WorkerStatus.RUNNING,
    "STOPPED": WorkerStatus.RUNNING,
    "SIGNALING": WorkerStatus.RUNNING,
    "STAGE_OUT": WorkerStatus.RUNNING,
    "RESIZING": WorkerStatus.RUNNING,
    "COMPLETED": WorkerStatus.FINISHED,
    "CANCELLED": WorkerStatus.CANCELLED,
    "FAILED": WorkerStatus.FAILED,
    "TIMEOUT": WorkerStatus.FAILED,
    "NODE_FAIL": WorkerStatus.FAILED,
    "PREEMPTED": WorkerStatus.FAILED,
    "BOOT_FAIL": WorkerStatus.FAILED,
    "DEADLINE": WorkerStatus.FAILED,
    "OUT_OF_MEMORY": WorkerStatus.FAILED,
    "SPECIAL_EXIT": WorkerStatus.FAILED,
    "REVOKED": WorkerStatus.CANCELLED,
}
"""Slurm job states (``squeue``/``sacct``/``scontrol``) → worker states."""

SCRIPT_TEMPLATE = """\
#!/bin/bash
{directives}
# hpcaf worker {name}: one pilot in one slot
{environment}
cd "{workdir}" || exit 1
{command}
"""


class SlurmOptions(BaseModel):
    """``provider_options`` of a Slurm queue."""

    model_config = ConfigDict(extra="forbid")

    partition: str = Field(min_length=1)
    account: str | None = None
    qos: str | None = None
    gres: str | None = None
    """e.g. ``gpu:1``; default ``gpu:N`` from the queue's ``gpus``."""
    extra_directives: list[str] = Field(default_factory=list)
    """Further ``#SBATCH`` lines, written as given (``--constraint=haswell``)."""
    environment: dict[str, str] = Field(default_factory=dict)
    """Exported in the batch script before the pilot starts."""
    slurm_conf: str | None = None
    """``SLURM_CONF`` for the commands (a dev cluster's configuration)."""
    bin_dir: str | None = None
    """Where sbatch/squeue/scancel/scontrol/sacct live (default: PATH)."""
    command_timeout_s: float = Field(30.0, gt=0)
    polling_interval_s: float = Field(5.0, gt=0)


class SlurmProvider(Provider):
    """Workers as Slurm batch jobs."""

    label = "slurm"

    def __init__(self, options: SlurmOptions) -> None:
        self.options = options
        self._no_accounting = False
        """Learnt from sacct: the site keeps no accounting database, only (perhaps) a
        job completion log, which ``sacct -c`` reads."""

    @property
    def polling_interval_s(self) -> float:
        return self.options.polling_interval_s

    # -- commands ------------------------------------------------------------------

    def _bin(self, name: str) -> str:
        return str(Path(self.options.bin_dir) / name) if self.options.bin_dir else name

    def _env(self) -> Mapping[str, str]:
        env = dict(os.environ)
        if self.options.slurm_conf:
            env["SLURM_CONF"] = self.options.slurm_conf
        return env

    def _run(self, *args: str) -> str:
        return run_command(
            [self._bin(args[0]), *args[1:]],
            timeout_s=self.options.command_timeout_s,
            env=self._env(),
        ).stdout

    def largest_node(self) -> tuple[int, int] | None:
        """(CPUs, MiB) of the partition's largest node, or ``None`` if Slurm cannot say."""
        try:
            out = run_command(
                [self._bin("sinfo"), "-h", "-p", self.options.partition, "-o", "%c %m"],
                timeout_s=min(10.0, self.options.command_timeout_s),
                env=self._env(),
            ).stdout
        except CommandError as exc:
            log.warning("slurm: cannot check partition %s: %s", self.options.partition, exc)
            return None
        sizes = []
        for line in out.split("\n"):
            parts = line.split()
            if (
                len(parts) == 2
                and parts[0].rstrip("+").isdigit()
                and parts[1].rstrip("+").isdigit()
            ):
                sizes.append((int(parts[0].rstrip("+")), int(parts[1].rstrip("+"))))
        return max(sizes) if sizes else None

    # -- rendering -----------------------------------------------------------------

    def directives(self, resources: WorkerResources, name: str, workdir: Path) -> list[str]:
        """The ``#SBATCH`` lines for one worker (without the prefix)."""
        o = self.options
        minutes = max(1, -(-resources.walltime_s // 60))
        lines = [
            f"--job-name={name}",
            f"--partition={o.partition}",
            *_layout(resources),
            f"--mem={resources.memory_mb}M",
            f"--time={minutes}",
            f"--output={workdir}/stdout",
            f"--error={workdir}/stderr",
        ]
        if o.account:
            lines.append(f"--account={o.account}")
        if o.qos:
            lines.append(f"--qos={o.qos}")
        gres = o.gres or (f"gpu:{resources.gpus}" if resources.gpus else None)
        if gres:
            lines.append(f"--gres={gres}")
        lines += o.extra_directives
        return lines

    def render_script(
        self, command: str, resources: WorkerResources, name: str, workdir: Path
    ) -> str:
        directives = "\n".join(f"#SBATCH {d}" for d in self.directives(resources, name, workdir))
        environment = "\n".join(
            f"export {key}={shlex.quote(value)}" for key, value in self.options.environment.items()
        )
        return SCRIPT_TEMPLATE.format(
            directives=directives,
            name=name,
            environment=environment,
            workdir=workdir,
            command=command,
        )

    # -- the provider interface ----------------------------------------------------

    def submit(self, command: str, resources: WorkerResources, name: str, workdir: Path) -> str:
        workdir.mkdir(parents=True, exist_ok=True)
        script = workdir / "pilot.sbatch"
        script.write_text(self.render_script(command, resources, name, workdir))
        script.chmod(0o700)
        out = self._run("sbatch", "--parsable", str(script)).strip()
        batch_id = out.split(";", 1)[0]
        if not batch_id.isdigit():
            raise ProviderError(f"sbatch answered {out!r}, not a job id")
        return batch_id

    def status(self, batch_ids: list[str]) -> dict[str, BatchStatus]:
        if not batch_ids:
            return {}
        found = self._squeue(batch_ids)
        for batch_id in batch_ids:
            if batch_id not in found:
                found[batch_id] = self._left_queue(batch_id)
        return found

    def _squeue(self, batch_ids: list[str]) -> dict[str, BatchStatus]:
        out = self._run("squeue", "-h", "-t", "all", "-o", "%i|%T|%r", "-j", ",".join(batch_ids))
        found: dict[str, BatchStatus] = {}
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) < 2 or parts[0] not in batch_ids:
                continue
            batch_id, native = parts[0], parts[1]
            status = map_native_state(SLURM_STATES, native, provider="slurm")
            if status in (WorkerStatus.FINISHED, WorkerStatus.FAILED, WorkerStatus.CANCELLED):
                found[batch_id] = self._left_queue(batch_id)  # exit code from scontrol/sacct
            else:
                found[batch_id] = BatchStatus(
                    status, native, message=parts[2] if len(parts) > 2 else None
                )
        return found

    def _left_queue(self, batch_id: str) -> BatchStatus:
        """A job squeue no longer lists: ask scontrol, then the job completion log."""
        for probe in (self._scontrol, self._sacct):
            try:
                result = probe(batch_id)
            except CommandError as exc:
                log.warning("slurm: %s", exc)
                continue
            if result is not None:
                return result
        return BatchStatus(
            WorkerStatus.MISSED,
            "unknown",
            message=f"Slurm job {batch_id} is known to neither squeue, scontrol nor sacct",
        )

    def _scontrol(self, batch_id: str) -> BatchStatus | None:
        out = self._run("scontrol", "-o", "show", "job", batch_id)
        fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
        native = fields.get("JobState")
        if not native:
            return None
        return self._final(native, fields.get("ExitCode", ""), fields.get("Reason"))

    def _sacct(self, batch_id: str) -> BatchStatus | None:
        """The job's end from slurmdbd (plain ``sacct``); where the site has no accounting
        storage, sacct says so and the job completion log (``sacct -c``) is read instead."""
        query = ("-n", "-P", "-j", batch_id, "-o", "JobID,State,ExitCode")
        out = None
        if not self._no_accounting:
            try:
                out = self._run("sacct", *query)
            except CommandError as exc:
                if "accounting storage is disabled" not in str(exc).lower():
                    raise
                log.info("slurm: no accounting database here; reading the job completion log")
                self._no_accounting = True
        if out is None:
            out = self._run("sacct", "-c", *query)
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) >= 3 and parts[0] == batch_id:
                return self._final(parts[1].split()[0], parts[2], None)
        return None

    def _final(self, native: str, exit_field: str, reason: str | None) -> BatchStatus:
        status = map_native_state(SLURM_STATES, native, provider="slurm")
        code = _exit_code(exit_field)
        message = None
        if status is WorkerStatus.FINISHED and code not in (None, 0):
            status = WorkerStatus.FAILED
        if status is WorkerStatus.FAILED:
            message = f"Slurm job {native}" + (
                f", pilot exit code {code}" if code is not None else ""
            )
            if reason and reason not in ("None", "NonZeroExitCode"):
                message += f" ({reason})"
        elif status is WorkerStatus.CANCELLED:
            message = "Slurm job cancelled (scancel)"
        return BatchStatus(status, native, exit_code=code, message=message)

    def cancel(self, batch_ids: list[str]) -> None:
        if batch_ids:
            self._run("scancel", *batch_ids)


def _exit_code(field: str) -> int | None:
    """Slurm's ``code:signal`` exit field to one number (128 + signal when signalled)."""
    if not field:
        return None
    code, _, signal = field.partition(":")
    try:
        if signal and int(signal):
            return 128 + int(signal)
        return int(code)
    except ValueError:
        return None


def slurm_options(raw: dict[str, Any]) -> SlurmOptions:
    return SlurmOptions(**raw)


def _layout(resources: WorkerResources) -> list[str]:
    """One task of the slot's cores on one node; for a multi-node allocation, a task per
    core on every node (the ranks the pilot's ``srun`` starts)."""
    if resources.nodes > 1:
        return [
            f"--nodes={resources.nodes}",
            f"--ntasks-per-node={resources.cores}",
            "--cpus-per-task=1",
        ]
    return ["--nodes=1", "--ntasks=1", f"--cpus-per-task={resources.cores}"]
