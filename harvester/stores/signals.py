"""Wake-up calls inside one harvester process: work arrived, wake who waits for it.

The database is the truth; these only shorten waits. An agent sleeps its
interval unless a route or another agent nudges it (a task submitted wakes the
splitter, a split task wakes brokerage); a pilot's long-polling acquire sleeps
until brokerage activates a job of its queue; a client following a task sleeps
until one of its jobs ends. Whoever waits also looks again after a bounded time,
so work made by another harvester instance (which cannot nudge this one) waits
at most that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Hashable, Iterator


class Nudges:
    """One event per agent name: :meth:`nudge` ends the agent's current sleep."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def event(self, name: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(name, threading.Event())

    def nudge(self, name: str) -> None:
        self.event(name).set()


NOTIFIED = "notified"
"""The reason of a plain notify."""
PASSED_ON = "passed on"
"""The reason of a wake-up handed on by a waiter that could not use its own."""


class Wakeups:
    """Coroutines of the API's event loop waiting on a key, woken from any thread.

    :meth:`notify` is called from the routes' worker threads and the agents'
    threads; the waiters are futures of the event loop, settled through
    ``call_soon_threadsafe``. :meth:`close` wakes everyone (the server stops) and
    makes later waits return at once.
    """

    def __init__(self) -> None:
        self._waiters: dict[Hashable, set[tuple[asyncio.AbstractEventLoop, asyncio.Future[str]]]]
        self._waiters = {}
        self._lock = threading.Lock()
        self.closed = False

    def notify(
        self,
        key: Hashable,
        limit: int | None = None,
        *,
        reason: str = NOTIFIED,
        exclude: Watch | None = None,
    ) -> None:
        """Wake the waiters of ``key``: all, or at most ``limit`` (one per job activated,
        rather than every pilot of a queue for one job), never ``exclude``."""
        with self._lock:
            waiters = self._waiters.get(key, set())
            chosen = [w for w in waiters if exclude is None or w[1] is not exclude.future]
            if limit is not None:
                chosen = chosen[: max(0, limit)]
            for waiter in chosen:
                waiters.discard(waiter)
            if not waiters:
                self._waiters.pop(key, None)
        for loop, future in chosen:
            loop.call_soon_threadsafe(_settle, future, reason)

    def notify_all(self) -> None:
        """Wake every waiter, whatever its key."""
        with self._lock:
            woken = [w for waiters in self._waiters.values() for w in waiters]
            self._waiters.clear()
        for loop, future in woken:
            loop.call_soon_threadsafe(_settle, future, NOTIFIED)

    def close(self) -> None:
        self.closed = True
        self.notify_all()

    @contextlib.contextmanager
    def watch(self, key: Hashable) -> Iterator[Watch]:
        """Register for ``key`` *before* looking at the database, then wait on the watch:
        a notify that comes between the look and the wait is kept, not lost (it would
        cost the waiter its whole recheck interval)."""
        loop = asyncio.get_running_loop()
        waiter = (loop, loop.create_future())
        with self._lock:
            self._waiters.setdefault(key, set()).add(waiter)
        try:
            yield Watch(waiter[1], closed=self.closed)
        finally:
            with self._lock:
                waiters = self._waiters.get(key)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._waiters[key]

    async def wait(self, key: Hashable, timeout_s: float) -> bool:
        """Sleep until ``key`` is notified (True) or ``timeout_s`` passed (False)."""
        with self.watch(key) as watch:
            return await watch.wait(timeout_s) is not None


class Watch:
    """One registered waiter of :meth:`Wakeups.watch`."""

    def __init__(self, future: asyncio.Future[str], *, closed: bool) -> None:
        self.future = future
        self._closed = closed

    @property
    def notified(self) -> bool:
        """Whether a notify picked this watch already (its wait returns at once)."""
        return self.future.done()

    async def wait(self, timeout_s: float) -> str | None:
        """Until notified since the watch began (the notifier's reason) or ``timeout_s``
        passed (``None``)."""
        if self._closed or timeout_s <= 0:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(self.future), timeout_s)
        except TimeoutError:
            return None


def _settle(future: asyncio.Future[str], reason: str) -> None:
    if not future.done():
        future.set_result(reason)
