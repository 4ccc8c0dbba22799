"""Pilot error codes: each a number with a short name and a documented meaning.

Numbers follow the spirit of PanDA's pilot codes (1xxx pilot side). The
harvester uses the same codes for failures it detects itself (a lost
heartbeat, a vanished worker), so a job always says why it failed.
"""

from __future__ import annotations

import enum


class PilotErrorCode(enum.IntEnum):
    """Why a job failed, from the pilot's (or the harvester's) point of view."""

    PAYLOAD_FAILED = 1305
    """The payload ran and exited non-zero (its exit code is kept separately)."""
    PAYLOAD_BAD_INPUT = 1306
    """The payload exited 65 (EX_DATAERR): its input can never succeed, so no retry."""
    IMAGE_NOT_FOUND = 1301
    """The container image is not in the image cache the pilot sees."""
    IMAGE_PULL_FAILED = 1307
    """The registry refused the task's image (unknown repository, tag or digest, a
    digest mismatch, access denied); the diagnostics are the registry's message."""
    RANK_FAILED = 1308
    """A rank of a multi-node job exited non-zero (or could not start); every other rank
    was stopped. The diagnostics name the ranks and their nodes."""
    CONTAINER_FAILED = 1302
    """The container runtime could not start the payload."""
    RUNTIME_MISSING = 1303
    """No usable container runtime (apptainer, singularity or bwrap) on the node."""
    GPU_NOT_VISIBLE = 1304
    """A GPU job whose container could not see the GPU."""
    STAGEIN_FAILED = 1099
    """An input file could not be downloaded or failed its checksum."""
    STAGEOUT_FAILED = 1137
    """A declared output was missing or could not be uploaded."""
    KILLED = 1144
    """The pilot was told to kill the job (task killed) or got a signal."""
    PILOT_SIGNALLED = 1145
    """The pilot received SIGTERM/SIGINT (batch eviction) and stopped the payload."""
    WALLTIME_EXCEEDED = 1213
    """The payload ran past the job's walltime and was killed."""
    LOST_HEARTBEAT = 1100
    """The harvester heard nothing from the pilot for longer than the timeout."""
    WORKER_VANISHED = 1101
    """The batch slot of the pilot ended (or vanished) while it held the job."""
    UNKNOWN = 1000
    """Anything the pilot did not anticipate; the diagnostics say more."""

    @property
    def retryable(self) -> bool:
        """Whether a new attempt may succeed."""
        return self not in (
            PilotErrorCode.IMAGE_NOT_FOUND,
            PilotErrorCode.IMAGE_PULL_FAILED,
            PilotErrorCode.PAYLOAD_BAD_INPUT,
        )

    def describe(self) -> str:
        """``1100 lost_heartbeat``: number and short name, as shown to users."""
        return f"{self.value} {self.name.lower()}"
