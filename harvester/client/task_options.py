"""The task options the submitting CLIs share, and the task parameter each one sets.

``pcontainer``, ``phpo`` and ``pfit`` take panda-client's options and send
panda-client's task parameters. Each CLI names an option's value as the harvester
names the parameter (the fields of ``protocol.tasks.TaskParameters``), and
:func:`task_parameters` turns those into the wire names, in this one place.
Where panda-client's names differ from the harvester's (``--nCore`` sends
``coreCount``, which the server calls ``cores``), :data:`WIRE_NAMES` says so.

The clients do not import ``protocol.tasks`` for this (pydantic would slow every
CLI's start); ``tests/test_task_options.py`` checks that the two agree.
"""

from __future__ import annotations

from typing import Any, TypedDict, Unpack


class TaskOptions(TypedDict, total=False):
    """Values of the shared options, under ``TaskParameters``' names; None: not given."""

    taskName: str | None
    containerImage: str | None
    exec: str | None
    outDS: str | None
    outputs: list[str] | None
    site: str | None
    excludedSite: list[str] | None
    architecture: str | None
    nJobs: int | None
    priority: int | None
    maxAttempt: int | None
    cores: int | None
    """``--nCore``: cores per job (the chain to ``OMP_NUM_THREADS``: ``TaskParameters.cores``)."""
    nodes: int | None
    """``--nNodes``: nodes per job, one allocation (``TaskParameters.nodes``)."""
    memory_mb: int | None
    """MiB per job: ``--memory`` (MB per core, as in panda-client) times the cores."""
    walltime_s: int | None
    """Seconds per job: ``--maxWalltime`` (hours, as in panda-client) times 3600."""


WIRE_NAMES: dict[str, str] = {
    "cores": "coreCount",
    "nodes": "nNodes",
    "memory_mb": "ramCount",
    "walltime_s": "maxWalltime",
}
"""The parameters whose wire name (panda-client's) is not the harvester's name."""


MAX_WALLTIME_HOURS = 30 * 24
"""The longest walltime the harvester accepts (30 days)."""


class OptionError(ValueError):
    """An option's value makes no sense; the message names the option."""


def memory_per_job(mb_per_core: int | None, cores: int | None) -> int | None:
    """``--memory`` is MB per core in panda-client's prun; a job's memory is that times its
    cores (``--nCore``, default 1). The harvester keeps MiB per job."""
    if mb_per_core is None:
        return None
    if mb_per_core < 1:
        raise OptionError(f"--memory {mb_per_core}: MB per core must be at least 1")
    return mb_per_core * (cores or 1)


def walltime_seconds(hours: float | None) -> int | None:
    """``--maxWalltime`` is hours in panda-client's prun (``--maxWalltime 24``: a day); the
    harvester keeps seconds."""
    if hours is None:
        return None
    if not 0 < hours <= MAX_WALLTIME_HOURS:  # NaN and inf fail here too
        raise OptionError(
            f"--maxWalltime {hours}: hours must be more than 0 and at most {MAX_WALLTIME_HOURS}"
        )
    return max(60, round(hours * 3600))


def task_parameters(**options: Unpack[TaskOptions]) -> dict[str, Any]:
    """The task parameters, under their wire names, of the options a CLI passes.

    Every option passed is kept, ``None`` included: what a missing option means
    (left out of the submission, or written as ``null`` by ``--dumpJson``) is the
    CLI's to decide, as before.
    """
    return {WIRE_NAMES.get(name, name): value for name, value in options.items()}
