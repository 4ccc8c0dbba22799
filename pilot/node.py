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


def slot_memory_mb(cores: int, default: int | None = None) -> int:
    """Memory this slot may use: the given size, else the batch allocation (Slurm's
    ``--mem`` or ``--mem-per-cpu``), else the node's; 0 when nothing says."""
    if default is not None:
        return default
    per_node = os.environ.get("SLURM_MEM_PER_NODE")
    if per_node and per_node.isdigit():
        return int(per_node)
    per_cpu = os.environ.get("SLURM_MEM_PER_CPU")
    if per_cpu and per_cpu.isdigit():
        return int(per_cpu) * cores
    return total_memory_mb()


def discover(cores: int | None = None, memory_mb: int | None = None, nodes: int = 1) -> NodeInfo:
    """This slot; in an allocation of several nodes, ``cores`` per node as given (Slurm's
    per-task figures there describe one rank, not the node)."""
    slot = cores if nodes > 1 and cores is not None else slot_cores(cores)
    return NodeInfo(
        hostname=socket.getfqdn(), cores=slot, memory_mb=slot_memory_mb(slot, memory_mb)
    )
