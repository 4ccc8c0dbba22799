"""What the pilot's node offers: host name, cores (the slot's allocation), memory."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class NodeInfo:
    hostname: str
    cores: int
    memory_mb: int


def slot_cores(default: int | None = None) -> int:
    """Cores this slot may use: the batch allocation when known, else the affinity mask."""
    for var in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE", "_CONDOR_NPROCS"):
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value)
    if default is not None:
        return default
    return len(os.sched_getaffinity(0))


def total_memory_mb() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def slot_memory_mb(default: int | None = None) -> int:
    """Memory this slot may use: the given size, else the batch allocation, else the node's."""
    if default is not None:
        return default
    value = os.environ.get("SLURM_MEM_PER_NODE")
    if value and value.isdigit():
        return int(value)
    return total_memory_mb()


def discover(cores: int | None = None, memory_mb: int | None = None) -> NodeInfo:
    return NodeInfo(
        hostname=socket.getfqdn(), cores=slot_cores(cores), memory_mb=slot_memory_mb(memory_mb)
    )
