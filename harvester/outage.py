"""What this process has seen of database outages.

An outage is logged once when it starts (and again every :data:`REMIND_S`
while it lasts) and once when it ends, instead of once per request and agent
cycle. The heartbeat watchdog asks when the database was last unreachable:
pilots could not record heartbeats then, so their silence is not held against
them until a whole heartbeat timeout has passed since.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("harvester.database")

REMIND_S = 30.0

CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})
"""Serialization failure and deadlock: the database is fine, this transaction lost a race
and was rolled back; running it again will do."""


def is_conflict(exc: BaseException) -> bool:
    """Whether a database error is a lost race (retry it) rather than an outage."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) in CONFLICT_SQLSTATES


class DatabaseHealth:
    """Outage bookkeeping, shared by the API and the agents of one process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._last_failure: float | None = None
        self._last_logged = 0.0

    def failed(self, where: str, exc: BaseException) -> None:
        """A database call failed for want of the database."""
        now = self._clock()
        with self._lock:
            self._last_failure = now
            starting = self._down_since is None
            if starting:
                self._down_since = now
            if starting or now - self._last_logged >= REMIND_S:
                self._last_logged = now
                assert self._down_since is not None
                log.warning(
                    "database unavailable for %.0fs (%s: %s); retrying",
                    now - self._down_since,
                    where,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                )

    def succeeded(self) -> None:
        """A database call worked: an outage in progress is over."""
        with self._lock:
            if self._down_since is None:
                return
            log.warning("database reachable again after %.0fs", self._clock() - self._down_since)
            self._down_since = None

    @property
    def last_failure(self) -> float | None:
        """When (monotonic) a database call last failed, or None."""
        with self._lock:
            return self._last_failure
