"""The provider interface, after Parsl's ExecutionProvider: submit, status, cancel, interval.

Each provider maps its batch system's native states to :class:`WorkerStatus`
through a visible table; a native state missing from the table maps to
``None`` (unknown), is logged, and leaves the worker as it was.
"""

from __future__ import annotations

import logging
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from protocol.states import WorkerStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerResources:
    """What one slot asks the batch system for."""

    cores: int = 1
    memory_mb: int = 2000
    walltime_s: int = 3600
    gpus: int = 0
    nodes: int = 1
    """Nodes of one allocation: above 1, ``cores`` and ``memory_mb`` are per node."""


@dataclass(frozen=True)
class BatchStatus:
    """A provider's view of one batch job."""

    status: WorkerStatus | None
    """Mapped worker state; ``None`` when the native state is unknown."""
    native: str
    """The batch system's own word for it."""
    exit_code: int | None = None
    message: str | None = None


def map_native_state(
    table: dict[str, WorkerStatus], native: str, *, provider: str
) -> WorkerStatus | None:
    """Look a native state up; an unknown one is logged and mapped to ``None``."""
    status = table.get(native)
    if status is None:
        log.warning("%s: unknown native batch state %r; worker left as it was", provider, native)
    return status


class Provider(ABC):
    """Starts pilots in batch slots and follows them."""

    label: str = "provider"

    @property
    @abstractmethod
    def polling_interval_s(self) -> float:
        """How often the monitor should ask for status."""

    @abstractmethod
    def submit(self, command: str, resources: WorkerResources, name: str, workdir: Path) -> str:
        """Start ``command`` (a shell command line) in one slot; return its batch id.

        Raises :class:`harvester.errors.ProviderError` with the batch system's
        own message when the submission is refused.
        """

    @abstractmethod
    def status(self, batch_ids: list[str]) -> dict[str, BatchStatus]:
        """The state of each batch job; ids the batch system no longer knows are MISSED."""

    @abstractmethod
    def cancel(self, batch_ids: list[str]) -> None:
        """Remove the batch jobs (their pilots get SIGTERM first where the system allows)."""

    def track(self, batch_id: str, workdir: Path) -> None:
        """Learn where an existing worker lives (after a harvester restart); most
        providers ask their batch system and need nothing."""
        return None

    def close(self) -> None:
        """The harvester is stopping. Batch pilots outlive it (they fail over, or wait for
        it to come back); pilots that are the harvester's own processes stop with it."""
        return None

    def sweep(self, batch_id: str, workdir: Path | None) -> None:
        """Remove what a finished worker left behind (scripts, logs)."""
        if workdir is not None and workdir.exists():
            shutil.rmtree(workdir, ignore_errors=True)
