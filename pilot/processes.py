"""Stopping a payload: its whole process group, politely first.

Payloads run in a session of their own (the container runtime and everything
it starts), so signalling the group reaches processes the runtime forked.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

KILL_GRACE_S = 10.0


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the payload's process group, SIGKILL after a grace period."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
