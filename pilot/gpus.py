"""GPU discovery on the worker node: nvidia-smi's query output, narrowed to this slot.

The slot's GPUs are those the batch system gave it: ``CUDA_VISIBLE_DEVICES``
(indices or UUIDs, MIG instances included) or Slurm's ``SLURM_JOB_GPUS`` (device
minors). A recorded nvidia-smi output
(``pilot --nvidia-smi FILE``) can stand in for the command, for nodes where it
is not on the PATH and for tests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

QUERY = [
    "--query-gpu=index,name,memory.total,driver_version,uuid,pci.bus_id",
    "--format=csv,noheader,nounits",
]
_CUDA = re.compile(r"CUDA Version:\s*([0-9.]+)")
_LISTED_GPU = re.compile(r"^GPU (\d+): .*\(UUID: (GPU-[^)]+)\)")
_LISTED_MIG = re.compile(r"^\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: (MIG-[^)]+)\)")
_MIG_MEMORY = re.compile(r"\.(\d+)gb$")
_DEVICE_MINOR = re.compile(r"Device Minor:\s*(\d+)")

PROC_GPUS = Path("/proc/driver/nvidia/gpus")
"""The driver's folder per GPU (by PCI bus id): its ``information`` names the minor
number, the N of ``/dev/nvidiaN``."""


@dataclass(frozen=True)
class Gpu:
    """One GPU (or one MIG instance of one) as nvidia-smi describes it.

    ``index`` is nvidia-smi's (its enumeration order, renumbered from 0 inside a batch
    slot whose cgroup hides the node's other GPUs); ``minor`` is the driver's, the N of
    the device file ``/dev/nvidiaN`` and of Slurm's ``SLURM_JOB_GPUS``. The two differ
    on many nodes, so device files are chosen by ``minor``.
    """

    index: str
    name: str
    memory_mb: int
    driver: str
    uuid: str
    cuda: str | None = None
    bus_id: str | None = None
    minor: int | None = None
    parent_uuid: str | None = None
    """For a MIG instance: the UUID of the GPU it is carved from."""

    @property
    def device_file(self) -> str:
        """The GPU's device file under ``/dev`` (a MIG instance's is its parent's)."""
        parent_index = self.index.split(":")[0]  # a MIG instance's is "<GPU>:<instance>"
        return f"nvidia{self.minor if self.minor is not None else parent_index}"

    def report(self) -> dict[str, Any]:
        return asdict(self)


def parse(text: str, proc_gpus: Path | None = None) -> list[Gpu]:
    """GPUs from query CSV lines, the CUDA version from a ``CUDA Version:`` line, and MIG
    instances from ``nvidia-smi -L`` lines; minors read from ``proc_gpus`` when given.

    A GPU in MIG mode is listed as its instances, not as itself: CUDA runs on those.
    """
    cuda_match = _CUDA.search(text)
    cuda = cuda_match.group(1) if cuda_match else None
    gpus: list[Gpu] = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) not in (5, 6) or not parts[0].isdigit():
            continue
        index, name, memory, driver, uuid = parts[:5]
        bus_id = parts[5] if len(parts) == 6 else None
        gpus.append(
            Gpu(
                index=index,
                name=name,
                memory_mb=int(float(memory)),
                driver=driver,
                uuid=uuid,
                cuda=cuda,
                bus_id=bus_id,
                minor=device_minor(bus_id, proc_gpus) if bus_id and proc_gpus else None,
            )
        )
    return _with_mig_instances(gpus, text)


def _with_mig_instances(gpus: list[Gpu], text: str) -> list[Gpu]:
    by_uuid = {g.uuid: g for g in gpus}
    instances: dict[str, list[Gpu]] = {}
    parent: Gpu | None = None
    for line in text.splitlines():
        listed = _LISTED_GPU.match(line)
        if listed:
            parent = by_uuid.get(listed.group(2))
            continue
        mig = _LISTED_MIG.match(line)
        if mig and parent is not None:
            profile, number, uuid = mig.groups()
            memory = _MIG_MEMORY.search(profile)
            instances.setdefault(parent.uuid, []).append(
                replace(
                    parent,
                    index=f"{parent.index}:{number}",
                    name=f"{parent.name} MIG {profile}",
                    memory_mb=int(memory.group(1)) * 1024 if memory else 0,
                    uuid=uuid,
                    parent_uuid=parent.uuid,
                )
            )
    return [one for g in gpus for one in instances.get(g.uuid, [g])]


def device_minor(bus_id: str, proc_gpus: Path = PROC_GPUS) -> int | None:
    """The minor number of the GPU at PCI ``bus_id`` (nvidia-smi's ``00000000:3B:00.0``
    is the driver's ``0000:3b:00.0``), or ``None`` when the driver does not say."""
    domain, _, rest = bus_id.strip().partition(":")
    folder = proc_gpus / f"{domain[-4:]}:{rest}".lower()
    try:
        found = _DEVICE_MINOR.search((folder / "information").read_text())
    except OSError:
        return None
    return int(found.group(1)) if found else None


def slot_gpus(gpus: list[Gpu], env: Mapping[str, str]) -> list[Gpu]:
    """The GPUs allocated to this slot by the batch system (all of them if it says nothing).

    ``CUDA_VISIBLE_DEVICES`` names nvidia-smi indices or UUIDs (MIG instances by their
    UUIDs); Slurm's ``SLURM_JOB_GPUS`` names device minors.
    """
    visible = env.get("CUDA_VISIBLE_DEVICES")
    by_minor = False
    if visible is None:
        visible = env.get("SLURM_JOB_GPUS") or env.get("SLURM_STEP_GPUS")
        by_minor = visible is not None
    if visible is None:
        return gpus
    wanted = [v.strip() for v in visible.split(",") if v.strip()]
    if not wanted or wanted == ["-1"] or visible.strip().lower() == "nodevfiles":
        return []
    if by_minor:
        return [g for g in gpus if (g.device_file.removeprefix("nvidia")) in wanted]
    return [g for g in gpus if {g.index, g.uuid, *_parent_names(g)} & set(wanted)]


def _parent_names(gpu: Gpu) -> tuple[str, ...]:
    """How an allocation may name the GPU a MIG instance is carved from (the whole GPU:
    every instance of it)."""
    if gpu.parent_uuid is None:
        return ()
    return (gpu.parent_uuid, gpu.index.split(":")[0])


def discover(recorded: Path | None, env: Mapping[str, str]) -> list[Gpu]:
    """This slot's GPUs, from nvidia-smi (or its recorded output); none without either."""
    if recorded is not None:
        return slot_gpus(parse(recorded.read_text(), PROC_GPUS), env)
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
    try:  # MIG instances; without them the GPUs are still the query's
        listing = subprocess.run([binary, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        listing = ""
    cuda = _CUDA.search(header)
    text = query + (f"\nCUDA Version: {cuda.group(1)}" if cuda else "") + "\n" + listing
    return slot_gpus(parse(text, PROC_GPUS), env)


def device_nodes(gpus: list[Gpu], dev: Path = Path("/dev")) -> list[str]:
    """Device files a container needs for these GPUs (those that exist on the node): the
    driver's control files, each GPU's own by its minor, and for MIG instances the
    capability files (which of them a process may open is the batch system's device
    cgroup's to say, as for the GPUs themselves)."""
    names = [
        "nvidiactl",
        "nvidia-uvm",
        "nvidia-uvm-tools",
        "nvidia-modeset",
        *dict.fromkeys(g.device_file for g in gpus),
    ]
    found = [str(dev / n) for n in names if (dev / n).exists()]
    caps = dev / "nvidia-caps"
    if any(g.parent_uuid for g in gpus) and caps.is_dir():
        found += sorted(str(c) for c in caps.iterdir() if c.name.startswith("nvidia-cap"))
    return found


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
