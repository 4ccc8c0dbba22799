"""Per-process memories that let an idle pilot fleet's polls skip the database.

A thousand pilots polling an empty queue mostly ask one question: is there
anything for queue Q now? Each API process remembers, briefly, which tokens it
has checked and which queues it found empty, and answers such polls from
memory. Both memories only ever say "as it was a moment ago": a revoked token
stops working, and a newly activated job is handed out, within their lifetime
(``token_cache_s``, ``idle_poll_cache_s``).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from harvester.identity import Principal, hash_token

MAX_ENTRIES = 100_000
"""Bound on each memory; the oldest entries go first."""


class _Expiring:
    """Keys remembered until an expiry, oldest evicted first past MAX_ENTRIES."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, object]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> object | None:
        if self.ttl_s <= 0:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._entries[key]
                return None
            return entry[1]

    def put(self, key: Hashable, value: object) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._entries[key] = (self._clock() + self.ttl_s, value)
            self._entries.move_to_end(key)
            while len(self._entries) > MAX_ENTRIES:
                self._entries.popitem(last=False)

    def discard_where(self, keep: Callable[[Hashable], bool]) -> None:
        with self._lock:
            for key in [k for k in self._entries if not keep(k)]:
                del self._entries[key]

    def discard(self, key: Hashable) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class TokenCache:
    """Tokens this process checked against the database recently (by hash, never plaintext)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._memory = _Expiring(ttl_s, clock)

    def get(self, token: str | None) -> Principal | None:
        if not token:
            return None
        principal = self._memory.get(hash_token(token))
        return principal if isinstance(principal, Principal) else None

    def remember(self, token: str, principal: Principal) -> None:
        self._memory.put(hash_token(token), principal)

    def clear(self) -> None:
        """Forget every token (after a revocation through this process)."""
        self._memory.clear()


PollKey = tuple[str, int | None, int | None, int | None, int]
"""A poll's queue and resource limits (cores, memory MB, GPUs, nodes of its allocation)."""


class IdleQueues:
    """Queues (for given pilot resources) where a poll found nothing to claim, and the
    workers this process has seen running (their polls change nothing but a job)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._idle = _Expiring(ttl_s, clock)
        self._running_workers = _Expiring(3600.0 if ttl_s > 0 else 0.0, clock)

    def is_idle(self, key: PollKey, worker_id: int | None) -> bool:
        """Whether a poll like this one found nothing a moment ago (and needs no worker update)."""
        if worker_id is not None and self._running_workers.get(worker_id) is None:
            return False
        return self._idle.get(key) is not None

    def found_nothing(self, key: PollKey, worker_id: int | None) -> None:
        self._idle.put(key, True)
        if worker_id is not None:
            self._running_workers.put(worker_id, True)

    def found_work(self, key: PollKey) -> None:
        self._idle.discard(key)

    def forget_queue(self, queue: str) -> None:
        """Jobs were activated for ``queue``: its next polls look at the database."""
        self._idle.discard_where(lambda key: not (isinstance(key, tuple) and key[0] == queue))
