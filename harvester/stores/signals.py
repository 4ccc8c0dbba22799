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
import threading
from collections.abc import Hashable


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


class Wakeups:
    """Coroutines of the API's event loop waiting on a key, woken from any thread.

    :meth:`notify` is called from the routes' worker threads and the agents'
    threads; the waiters are futures of the event loop, settled through
    ``call_soon_threadsafe``. :meth:`close` wakes everyone (the server stops) and
    makes later waits return at once.
    """

    def __init__(self) -> None:
        self._waiters: dict[Hashable, set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]]
        self._waiters = {}
        self._lock = threading.Lock()
        self.closed = False

    def notify(self, key: Hashable) -> None:
        with self._lock:
            woken = self._waiters.pop(key, set())
        for loop, future in woken:
            loop.call_soon_threadsafe(_settle, future)

    def notify_all(self) -> None:
        """Wake every waiter, whatever its key."""
        with self._lock:
            woken = [w for waiters in self._waiters.values() for w in waiters]
            self._waiters.clear()
        for loop, future in woken:
            loop.call_soon_threadsafe(_settle, future)

    def close(self) -> None:
        self.closed = True
        self.notify_all()

    async def wait(self, key: Hashable, timeout_s: float) -> bool:
        """Sleep until ``key`` is notified (True) or ``timeout_s`` passed (False)."""
        if self.closed or timeout_s <= 0:
            return False
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiter = (loop, future)
        with self._lock:
            self._waiters.setdefault(key, set()).add(waiter)
        try:
            await asyncio.wait_for(future, timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                waiters = self._waiters.get(key)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._waiters[key]


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
