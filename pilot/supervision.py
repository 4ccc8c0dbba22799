"""Watching a running payload: the walltime deadline and kill requests.

Both ways of running a job, a container of its own or a warm worker
(``pilot/execution.py``), are supervised here alike, so they end for the same
reasons with the same pilot error codes and diagnostics:

- a kill request (the server's command, a signal to the pilot) stops the
  payload at once and the job fails with the request's code and reason;
- a payload still running at its walltime is stopped: ``WALLTIME_EXCEEDED``;
- a payload gone without an exit code (a warm worker that died) is a
  ``CONTAINER_FAILED``, in the words of its execution path.

Kill requests come from other threads (the heartbeat, a signal handler, the
reply to an update); the job's own thread supervises.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from pilot.outcome import Outcome
from pilot.processes import terminate
from protocol.error_codes import PilotErrorCode

KILLED_BY_SERVER = "killed on the server's command"
"""The reason of a kill the server asked for (in a heartbeat or an update reply)."""


class Payload(Protocol):
    """A started payload, as the supervisor sees it."""

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The process whose group a kill request terminates."""
        ...

    @property
    def died(self) -> str:
        """The diagnostics when it ends before its walltime without an exit code."""
        ...

    def wait(self, timeout_s: float) -> int | None:
        """Its exit code, or ``None`` when none came within ``timeout_s`` or it died."""
        ...

    def stop(self) -> int | None:
        """End a payload that gave no exit code; its exit code if it then has one."""
        ...


@dataclass(frozen=True)
class Exited:
    """The payload ended on its own, within its walltime and not killed."""

    code: int
    elapsed_s: float


@dataclass(frozen=True)
class KillRequest:
    code: PilotErrorCode
    reason: str


class Supervisor:
    """The job now running, the process a kill stops, and why it was killed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._job_id: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._kill: KillRequest | None = None

    @contextlib.contextmanager
    def job(self, job_id: int) -> Iterator[None]:
        """While the job is inside, kill requests for it are kept (and acted on once
        its payload runs); outside, they are ignored."""
        with self._lock:
            self._job_id, self._kill = job_id, None
        try:
            yield
        finally:
            with self._lock:
                self._job_id, self._process = None, None

    def kill(self, job_id: int | None, code: PilotErrorCode, reason: str) -> None:
        """Stop the payload of ``job_id`` (or whatever runs, when ``None``)."""
        with self._lock:
            if self._job_id is None or (job_id is not None and job_id != self._job_id):
                return
            self._kill = KillRequest(code, reason)
            process = self._process
        if process is not None:
            terminate(process)

    def supervise(
        self, payload: Payload, walltime_s: float, running: Callable[[], object]
    ) -> Outcome | Exited:
        """Watch a started payload to its end; ``running`` reports that it runs.

        The walltime counts from that report. A kill requested before the
        payload started stops it as soon as it has.
        """
        with self._lock:
            self._process = payload.process
            pending = self._kill
        if pending is not None:
            terminate(payload.process)
        running()
        started = time.monotonic()
        code = payload.wait(walltime_s)
        elapsed = time.monotonic() - started
        timed_out = False
        if code is None:
            timed_out = elapsed >= walltime_s
            code = payload.stop()
        with self._lock:
            kill = self._kill
        if kill is not None:
            return Outcome("failed", exit_code=code, error_code=kill.code, diagnostics=kill.reason)
        if timed_out:
            return Outcome(
                "failed",
                exit_code=code,
                error_code=PilotErrorCode.WALLTIME_EXCEEDED,
                diagnostics=f"payload ran past its walltime of {walltime_s:.0f}s",
            )
        if code is None:
            return Outcome(
                "failed", error_code=PilotErrorCode.CONTAINER_FAILED, diagnostics=payload.died
            )
        return Exited(code, elapsed)
