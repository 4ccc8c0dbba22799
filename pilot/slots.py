"""The pilot's slot as a ledger: what it holds, what its running jobs took, what is free.

HPC sites hand out whole nodes (or many-core slots). A pilot there runs several
jobs at once, each in its own container with its own thread count, as long as
their cores, memory and GPUs fit what the slot holds; it asks the dispatcher
only for jobs that fit what is free now. With packing off (a queue's
``packJobs = false``) it runs one job at a time, as a one-job slot would.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from pilot.gpus import Gpu
from protocol.pilot import JobSpec


@dataclass(frozen=True)
class Free:
    """What the slot can give the next job."""

    cores: int
    memory_mb: int | None
    """``None``: not known, not asked for."""
    gpus: int


class SlotLedger:
    """Cores, memory and GPUs of the slot, taken by jobs as they start and given back."""

    def __init__(self, cores: int, memory_mb: int, gpus: list[Gpu], *, pack: bool = True) -> None:
        self.cores = max(1, cores)
        self.memory_mb = memory_mb if memory_mb > 0 else None
        """``None`` when the slot's memory is unknown: jobs are packed by cores alone."""
        self.pack = pack
        self._free_gpus = list(gpus)
        self._taken: dict[int, tuple[int, int, list[Gpu]]] = {}
        self._lock = threading.Lock()

    def free(self) -> Free | None:
        """What the next job may take, or ``None`` when no job can start now."""
        with self._lock:
            if self._taken and not self.pack:
                return None
            cores = self.cores - sum(c for c, _, _ in self._taken.values())
            memory = None
            if self.memory_mb is not None:
                memory = self.memory_mb - sum(m for _, m, _ in self._taken.values())
                if memory < 1:
                    return None
            if cores < 1:
                return None
            return Free(cores=cores, memory_mb=memory, gpus=len(self._free_gpus))

    def take(self, spec: JobSpec) -> list[Gpu]:
        """Book the job's cores, memory and GPUs; return the GPUs it was given.

        The dispatcher sends only jobs that fit what :meth:`free` said, so the
        GPUs asked for are free.
        """
        with self._lock:
            given = self._free_gpus[: spec.gpus]
            del self._free_gpus[: spec.gpus]
            self._taken[spec.job_id] = (max(1, spec.cores), max(0, spec.memory_mb), given)
            return given

    def give_back(self, job_id: int) -> None:
        with self._lock:
            _, _, gpus = self._taken.pop(job_id, (0, 0, []))
            self._free_gpus.extend(gpus)

    def running(self) -> int:
        with self._lock:
            return len(self._taken)
