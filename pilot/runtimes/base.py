"""The container-runtime interface: turn a job into one command line."""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

WORKDIR_IN_CONTAINER = "/srv/workDir"
TRANSFORMS_IN_CONTAINER = "/srv/transforms"
CACHE_IN_CONTAINER = "/srv/cache"
NVIDIA_IN_CONTAINER = "/usr/local/nvidia"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Bind:
    """A host path made visible in the container."""

    source: str
    target: str
    writable: bool = False

    @classmethod
    def parse(cls, spec: str) -> Bind:
        """``/src``, ``/src:/dst`` or ``/src:/dst:rw`` (read-only unless ``rw``)."""
        parts = spec.split(":")
        if len(parts) == 1:
            return cls(parts[0], parts[0])
        if len(parts) == 2:
            return cls(parts[0], parts[1])
        return cls(parts[0], parts[1], writable=parts[2] == "rw")


@dataclass(frozen=True)
class ContainerRequest:
    """Everything a runtime needs to start one payload."""

    image: Path
    argv: list[str]
    workdir: Path
    transforms_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    binds: list[Bind] = field(default_factory=list)
    allow_network: bool = False
    gpu: bool = False
    devices: list[str] = field(default_factory=list)
    """Device files to expose (GPU jobs under bubblewrap)."""
    gpu_libraries: list[str] = field(default_factory=list)
    """The host's NVIDIA driver libraries (GPU jobs under bubblewrap)."""
    extra_options: list[str] = field(default_factory=list)


class ContainerRuntime(ABC):
    """One way of running an image."""

    name = "runtime"

    @classmethod
    def available(cls) -> bool:
        return shutil.which(cls.name) is not None

    @abstractmethod
    def command(self, request: ContainerRequest) -> list[str]:
        """The full command line that runs ``request.argv`` inside the image."""
