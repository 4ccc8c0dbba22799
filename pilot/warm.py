"""Warm workers: one long-lived container per (image, transform) serving consecutive jobs.

A fit transform started afresh for each job pays its imports, input parsing and
JIT compilation every time (the open problem of the FaaS demonstration). A
warm worker runs ``<transform> --serve`` once in a container that sees the
pilot's scratch area (``/srv/cache``); the pilot hands it one job per line
(``{"workdir": …, "env": …}``) and reads ``{"exit_code": N}`` back. Killing a
job kills the worker; the next job starts a new one.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import selectors
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WARM_TRANSFORMS = frozenset({"pyhf_fit", "pyfunc"})
"""Transforms that implement ``--serve``."""


class WarmWorker:
    """One ``--serve`` process in its container."""

    def __init__(self, command: list[str], log_path: Path) -> None:
        self.command = command
        with log_path.open("ab") as errors:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                start_new_session=True,
            )
        self.jobs = 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, request: dict[str, Any]) -> bool:
        """Hand the worker one job; False if it can no longer be written to."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            return False
        return True

    def reply(self, timeout_s: float) -> int | None:
        """The exit code of the job sent, or ``None``: no answer within ``timeout_s`` (ask
        again), or the worker died (:meth:`alive` says which)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                if not selector.select(timeout=min(left, 1.0)):
                    if not self.alive():
                        return None
                    continue
                line = self.proc.stdout.readline()
                if not line:
                    return None
                try:
                    reply = json.loads(line)
                except ValueError:
                    log.warning("warm worker said %r", line[:200])
                    continue
                self.jobs += 1
                return int(reply.get("exit_code", 1))

    def stop(self) -> None:
        """End the worker: close its input, then signal its process group."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    continue


class WarmPool:
    """The pilot's warm workers by key; stopped when the pilot ends.

    A worker serves one job at a time: :meth:`take` lends an idle worker of the
    key (or starts one) to the calling job alone, and :meth:`give_back` returns
    it. A whole-node pilot running two fits of one image at once thus has two
    workers of that key, never one worker with two jobs. At most ``max_idle``
    workers wait for a job (each holds its memory): beyond that, the one idle
    the longest is stopped.
    """

    def __init__(self, max_idle: int = 2) -> None:
        self.max_idle = max(1, max_idle)
        # Workers are started from one long-lived thread, never from a job's thread: a
        # runtime's parent-death signal (bwrap --die-with-parent, PR_SET_PDEATHSIG) fires
        # when the *thread* that started the child ends, which would kill a warm worker
        # as soon as the job that started it is over.
        self._spawner = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="warm-spawner"
        )
        self._idle: dict[tuple[Any, ...], list[WarmWorker]] = {}
        self._idle_order: list[tuple[tuple[Any, ...], WarmWorker]] = []
        self._lent: set[WarmWorker] = set()
        self._lock = threading.Lock()
        self._closed = False

    def take(self, key: tuple[Any, ...], command: list[str], log_path: Path) -> WarmWorker:
        stale: list[WarmWorker] = []
        worker = None
        with self._lock:
            idle = self._idle.get(key, [])
            while idle and worker is None:
                candidate = idle.pop()
                self._idle_order.remove((key, candidate))
                if candidate.alive():
                    worker = candidate
                else:
                    stale.append(candidate)
        for dead in stale:
            dead.stop()
        if worker is None:
            worker = self._spawner.submit(WarmWorker, command, log_path).result()
            log.info("warm worker started: %s", " ".join(command[-3:]))
        with self._lock:
            self._lent.add(worker)
        return worker

    def give_back(self, key: tuple[Any, ...], worker: WarmWorker) -> None:
        """The job is done with ``worker``: it serves the next job of its key."""
        evicted = []
        with self._lock:
            self._lent.discard(worker)
            if self._closed or not worker.alive():
                evicted.append(worker)
            else:
                self._idle.setdefault(key, []).append(worker)
                self._idle_order.append((key, worker))
                while len(self._idle_order) > self.max_idle:
                    old_key, old = self._idle_order.pop(0)
                    self._idle[old_key].remove(old)
                    evicted.append(old)
        for stale in evicted:
            stale.stop()

    def discard(self, worker: WarmWorker) -> None:
        """Stop ``worker`` (its job was killed, or it gave no answer)."""
        with self._lock:
            self._lent.discard(worker)
        worker.stop()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers = [w for idle in self._idle.values() for w in idle] + list(self._lent)
            self._idle.clear()
            self._idle_order.clear()
            self._lent.clear()
        for worker in workers:
            worker.stop()
        self._spawner.shutdown(wait=False)
