"""Warm workers: one long-lived container per (image, transform) serving consecutive jobs.

A fit transform started afresh for each job pays its imports, input parsing and
JIT compilation every time (the open problem of the FaaS demonstration). A
warm worker runs ``<transform> --serve`` once in a container that sees the
pilot's scratch area (``/srv/cache``); the pilot hands it one job per line
(``{"workdir": …, "env": …}``) and reads ``{"exit_code": N}`` back. Killing a
job kills the worker; the next job starts a new one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WARM_TRANSFORMS = frozenset({"pyhf_fit"})
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

    def run(self, request: dict[str, Any], timeout_s: float) -> int | None:
        """Send one job; its exit code, or ``None`` if the worker died or timed out."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            return None
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
    """The pilot's warm workers by key; stopped when the pilot ends."""

    def __init__(self) -> None:
        self._workers: dict[tuple[Any, ...], WarmWorker] = {}

    def get(self, key: tuple[Any, ...], command: list[str], log_path: Path) -> WarmWorker:
        worker = self._workers.get(key)
        if worker is None or not worker.alive():
            worker = WarmWorker(command, log_path)
            self._workers[key] = worker
            log.info("warm worker started: %s", " ".join(command[-3:]))
        return worker

    def discard(self, key: tuple[Any, ...]) -> None:
        worker = self._workers.pop(key, None)
        if worker is not None:
            worker.stop()

    def close(self) -> None:
        for key in list(self._workers):
            self.discard(key)
