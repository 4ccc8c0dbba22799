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


@dataclass
class _Watched:
    """What the supervisor knows of one job inside :meth:`Supervisor.job`."""

    process: subprocess.Popen[bytes] | None = None
    kill: KillRequest | None = None


class Supervisor:
    """The jobs now running, the processes a kill stops, and why each was killed.

    A whole-node pilot runs several jobs at once, each on a thread of its own:
    a job is the calling thread's between :meth:`job` and its end, so
    :meth:`supervise` needs no job id, and a kill names the job (or ``None``:
    every job, as for a signal to the pilot).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[int, _Watched] = {}
        self._current = threading.local()
        self._kill_all: KillRequest | None = None
        """A kill of every job (a signal to the pilot) holds for jobs that start later too:
        a job acquired while the signal arrived is stopped as soon as it starts."""

    @contextlib.contextmanager
    def job(self, job_id: int) -> Iterator[None]:
        """While the job is inside, kill requests for it are kept (and acted on once
        its payload runs); outside, they are ignored."""
        with self._lock:
            self._jobs[job_id] = _Watched(kill=self._kill_all)
        self._current.job_id = job_id
        try:
            yield
        finally:
            self._current.job_id = None
            with self._lock:
                self._jobs.pop(job_id, None)

    def kill(self, job_id: int | None, code: PilotErrorCode, reason: str) -> None:
        """Stop the payload of ``job_id`` (or of every job, when ``None``)."""
        with self._lock:
            if job_id is None:
                self._kill_all = KillRequest(code, reason)
            ids = list(self._jobs) if job_id is None else [job_id]
            targets = []
            for one in ids:
                watched = self._jobs.get(one)
                if watched is None:
                    continue
                watched.kill = KillRequest(code, reason)
                if watched.process is not None:
                    targets.append(watched.process)
        for process in targets:
            terminate(process)

    def _watched(self) -> _Watched:
        job_id = getattr(self._current, "job_id", None)
        watched = self._jobs.get(job_id) if job_id is not None else None
        if watched is None:
            raise RuntimeError("supervise() is called inside job() on the job's own thread")
        return watched

    def supervise(
        self,
        payload: Payload,
        walltime_s: float,
        running: Callable[[], object],
        *,
        report_after_s: float = 0.0,
    ) -> Outcome | Exited:
        """Watch a started payload to its end; ``running`` reports that it runs.

        With ``report_after_s``, that report waits so long for the payload to end
        first: a short call on a warm worker then goes from dispatched to its end in
        one report (its start travels with it), one request less on its round trip.
        The walltime counts from the start. A kill requested before the payload
        started stops it as soon as it has.
        """
        with self._lock:
            watched = self._watched()
            watched.process = payload.process
            pending = watched.kill
        if pending is not None:
            terminate(payload.process)
        started = time.monotonic()
        if report_after_s > 0:
            code = payload.wait(min(report_after_s, walltime_s))
            if code is None and payload.process.poll() is None:  # still at work: say so
                running()
                code = payload.wait(max(0.0, walltime_s - (time.monotonic() - started)))
        else:
            running()
            code = payload.wait(walltime_s)
        elapsed = time.monotonic() - started
        timed_out = False
        if code is None:
            timed_out = elapsed >= walltime_s
            code = payload.stop()
        with self._lock:
            kill = watched.kill
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
