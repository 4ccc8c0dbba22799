"""GPU discovery on the worker node: nvidia-smi's query output, narrowed to this slot.

The slot's GPUs are those the batch system gave it: ``CUDA_VISIBLE_DEVICES``
(indices or UUIDs) or Slurm's ``SLURM_JOB_GPUS``. A recorded nvidia-smi output
(``pilot --nvidia-smi FILE``) can stand in for the command, for nodes where it
is not on the PATH and for tests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

QUERY = ["--query-gpu=index,name,memory.total,driver_version,uuid", "--format=csv,noheader,nounits"]
_CUDA = re.compile(r"CUDA Version:\s*([0-9.]+)")


@dataclass(frozen=True)
class Gpu:
    """One GPU as nvidia-smi describes it."""

    index: str
    name: str
    memory_mb: int
    driver: str
    uuid: str
    cuda: str | None = None

    def report(self) -> dict[str, Any]:
        return asdict(self)


def parse(text: str) -> list[Gpu]:
    """GPUs from query CSV lines (and the CUDA version from a ``CUDA Version:`` line)."""
    cuda_match = _CUDA.search(text)
    cuda = cuda_match.group(1) if cuda_match else None
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5 or not parts[0].isdigit():
            continue
        index, name, memory, driver, uuid = parts
        gpus.append(
            Gpu(
                index=index,
                name=name,
                memory_mb=int(float(memory)),
                driver=driver,
                uuid=uuid,
                cuda=cuda,
            )
        )
    return gpus


def slot_gpus(gpus: list[Gpu], env: Mapping[str, str]) -> list[Gpu]:
    """The GPUs allocated to this slot by the batch system (all of them if it says nothing)."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        visible = env.get("SLURM_JOB_GPUS") or env.get("SLURM_STEP_GPUS")
    if visible is None:
        return gpus
    wanted = [v.strip() for v in visible.split(",") if v.strip()]
    if not wanted or wanted == ["-1"] or visible.strip().lower() == "nodevfiles":
        return []
    return [g for g in gpus if g.index in wanted or g.uuid in wanted]


def discover(recorded: Path | None, env: Mapping[str, str]) -> list[Gpu]:
    """This slot's GPUs, from nvidia-smi (or its recorded output); none without either."""
    if recorded is not None:
        return slot_gpus(parse(recorded.read_text()), env)
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return []
    try:
        query = subprocess.run(
            [binary, *QUERY], capture_output=True, text=True, timeout=20, check=True
        ).stdout
        header = subprocess.run([binary], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    cuda = _CUDA.search(header)
    text = query + (f"\nCUDA Version: {cuda.group(1)}" if cuda else "")
    return slot_gpus(parse(text), env)


def device_nodes(gpus: list[Gpu], dev: Path = Path("/dev")) -> list[str]:
    """Device files a container needs for these GPUs (those that exist on the node)."""
    names = [
        "nvidiactl",
        "nvidia-uvm",
        "nvidia-uvm-tools",
        "nvidia-modeset",
        *[f"nvidia{g.index}" for g in gpus],
    ]
    return [str(dev / n) for n in names if (dev / n).exists()]


def driver_libraries(ldconfig_output: str | None = None) -> list[str]:
    """The NVIDIA driver's user-space libraries, as ``ldconfig -p`` lists them."""
    if ldconfig_output is None:
        try:
            ldconfig_output = subprocess.run(
                ["ldconfig", "-p"], capture_output=True, text=True, timeout=20
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return []
    found: dict[str, str] = {}
    for line in ldconfig_output.splitlines():
        match = re.match(r"\s*(lib(?:cuda|nvidia-[\w.-]+|nvcuvid)\.so[\w.]*)\s.*=>\s*(\S+)", line)
        if match and ("x86-64" in line or "AArch64" in line):  # 64-bit only
            found.setdefault(match.group(1), match.group(2))
    return sorted(found.values())
