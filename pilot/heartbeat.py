"""The heartbeat thread: tells the server the pilot's jobs are alive, hears kill commands."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pilot.link import HarvesterLink, ServerError

log = logging.getLogger(__name__)


class Heartbeat:
    """Sends one heartbeat for the pilot's running jobs every ``interval_s`` seconds."""

    def __init__(
        self,
        server: HarvesterLink,
        pilot_id: str,
        worker_id: int | None,
        interval_s: float,
        on_kill: Callable[[int], None],
    ) -> None:
        self.server = server
        self.pilot_id = pilot_id
        self.worker_id = worker_id
        self.interval_s = interval_s
        self.on_kill = on_kill
        self._job_ids: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def add(self, job_id: int) -> None:
        """Heartbeat ``job_id`` too, from now until :meth:`discard`."""
        with self._lock:
            if job_id not in self._job_ids:
                self._job_ids.append(job_id)

    def discard(self, job_id: int) -> None:
        with self._lock:
            if job_id in self._job_ids:
                self._job_ids.remove(job_id)

    def beat(self) -> None:
        with self._lock:
            job_ids = list(self._job_ids)
        if not job_ids:
            return
        try:
            commands = self.server.heartbeat(
                {"pilot_id": self.pilot_id, "worker_id": self.worker_id, "job_ids": job_ids}
            )
        except ServerError as exc:
            log.warning("heartbeat failed: %s", exc)
            return
        for job_id, command in commands.items():
            if command == "tobekilled":
                log.warning("server says job %s is to be killed", job_id)
                self.on_kill(int(job_id))

    def _loop(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.25):
            if time.monotonic() - last >= self.interval_s:
                last = time.monotonic()
                self.beat()
