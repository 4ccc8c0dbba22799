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
    memory_mb: int | None
    """``--memory``: MiB per job."""
    walltime_s: int | None
    """``--maxWalltime``: seconds per job."""


WIRE_NAMES: dict[str, str] = {
    "cores": "coreCount",
    "memory_mb": "ramCount",
    "walltime_s": "maxWalltime",
}
"""The parameters whose wire name (panda-client's) is not the harvester's name."""


def task_parameters(**options: Unpack[TaskOptions]) -> dict[str, Any]:
    """The task parameters, under their wire names, of the options a CLI passes.

    Every option passed is kept, ``None`` included: what a missing option means
    (left out of the submission, or written as ``null`` by ``--dumpJson``) is the
    CLI's to decide, as before.
    """
    return {WIRE_NAMES.get(name, name): value for name, value in options.items()}
