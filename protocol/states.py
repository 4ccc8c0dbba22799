"""The states of tasks, jobs and workers, as every reply and report names them.

They are part of the protocol: the API answers them, pilots report some of
them, and the clients show them. Which moves between them are legal is the
database's rule (:mod:`db.states`).
"""

from __future__ import annotations

import enum


class TaskStatus(enum.StrEnum):
    """Life cycle of a task (one submission)."""

    REGISTERED = "registered"
    """Accepted and stored; not yet split into jobs."""
    READY = "ready"
    """Split into jobs; waiting for a pilot to pick one up."""
    RUNNING = "running"
    """At least one job was dispatched to a pilot."""
    DONE = "done"
    """Every job finished successfully."""
    FINISHED = "finished"
    """Every job ended, some of them failed (partial success)."""
    FAILED = "failed"
    """Every job ended and none finished."""
    ABORTED = "aborted"
    """Killed by its owner or an admin."""
    BROKEN = "broken"
    """Its parameters can never run (e.g. the image vanished)."""


TASK_TERMINAL = frozenset(
    {TaskStatus.DONE, TaskStatus.FINISHED, TaskStatus.FAILED, TaskStatus.ABORTED, TaskStatus.BROKEN}
)
"""Task states that end it (a retry may still reopen a failed or aborted one)."""


class JobStatus(enum.StrEnum):
    """Life cycle of one job attempt."""

    DEFINED = "defined"
    """Created by the splitter; not yet brokered to a queue."""
    ACTIVATED = "activated"
    """Brokered to a queue; waiting for a pilot of that queue."""
    SENT = "sent"
    """Claimed by a pilot (dispatched)."""
    STARTING = "starting"
    """The pilot is staging in and starting the container."""
    RUNNING = "running"
    """The payload is running."""
    FINISHED = "finished"
    """The payload exited 0 and its outputs were registered."""
    FAILED = "failed"
    """The payload or the pilot failed and no attempt is left."""
    CANCELLED = "cancelled"
    """Killed with its task."""
    CLOSED = "closed"
    """Failed, and superseded by a new attempt of the same job."""


class WorkerStatus(enum.StrEnum):
    """Life cycle of one batch slot running one pilot."""

    SUBMITTED = "submitted"
    """Handed to the batch system; queued there."""
    RUNNING = "running"
    """The batch system runs it."""
    FINISHED = "finished"
    """The pilot exited 0."""
    FAILED = "failed"
    """The pilot exited non-zero, or the submission failed."""
    CANCELLED = "cancelled"
    """Removed on purpose (by hpcaf or a site admin)."""
    MISSED = "missed"
    """Vanished from the batch system without a trace of how it ended."""
