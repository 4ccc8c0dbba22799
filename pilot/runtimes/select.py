"""Choosing the runtime for a queue: an explicit table of names to classes."""

from __future__ import annotations

from pilot.runtimes.apptainer import ApptainerRuntime, SingularityRuntime
from pilot.runtimes.base import ContainerRuntime
from pilot.runtimes.bwrap import BubblewrapRuntime
from protocol.error_codes import PilotErrorCode

RUNTIMES: dict[str, type[ContainerRuntime]] = {
    "apptainer": ApptainerRuntime,
    "singularity": SingularityRuntime,
    "bwrap": BubblewrapRuntime,
}
AUTO_ORDER = ("apptainer", "singularity", "bwrap")


class RuntimeUnavailable(Exception):
    code = PilotErrorCode.RUNTIME_MISSING


def select_runtime(preference: str = "auto") -> ContainerRuntime:
    """The queue's runtime, or under ``auto`` the first one installed."""
    names = AUTO_ORDER if preference == "auto" else (preference,)
    for name in names:
        cls = RUNTIMES.get(name)
        if cls is None:
            raise RuntimeUnavailable(f"unknown container runtime {name!r}")
        if cls.available():
            return cls()
    raise RuntimeUnavailable(f"no container runtime found on this node (tried {', '.join(names)})")
