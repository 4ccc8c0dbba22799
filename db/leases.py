"""Leases: a named duty held by one harvester instance at a time, until it expires.

Several ``harvester serve`` processes may share one database. Each duty that
must not run twice at once (submitting a queue's workers, splitting tasks,
the heartbeat watchdog, …) has a lease row. An instance takes a free or
expired lease, renews it well before it expires, and gives it back when it
stops; when it dies, another takes the lease over once it expires. Taking and
renewing are one conditional ``UPDATE``, so two instances never both succeed.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Lease, utcnow

GLOBAL = "agents:global"
"""The lease of the agents that act on every task and job (not per queue)."""


def queue_lease(queue: str) -> str:
    """The lease of the agents that act on one queue's workers."""
    return f"queue:{queue}"


def take(session: Session, name: str, holder: str, ttl_s: float) -> datetime | None:
    """Take or renew lease ``name`` for ``holder``; its new expiry, or None if another
    instance holds it."""
    now = utcnow()
    expires = now + timedelta(seconds=ttl_s)
    renewed = session.execute(
        update(Lease)
        .where(Lease.name == name, Lease.holder == holder)
        .values(expires_at=expires)
        .execution_options(synchronize_session=False)
    )
    if renewed.rowcount:  # type: ignore[attr-defined]
        return expires
    taken = session.execute(
        update(Lease)
        .where(Lease.name == name, Lease.expires_at < now)
        .values(holder=holder, acquired_at=now, expires_at=expires)
        .execution_options(synchronize_session=False)
    )
    if taken.rowcount:  # type: ignore[attr-defined]
        return expires
    if session.scalar(select(Lease.name).where(Lease.name == name)) is not None:
        return None  # held, and not expired
    try:
        with session.begin_nested():
            session.add(Lease(name=name, holder=holder, acquired_at=now, expires_at=expires))
    except IntegrityError:  # another instance created it first
        return None
    return expires


def give_back(session: Session, holder: str) -> int:
    """Expire every lease ``holder`` holds (a clean stop: the others take over at once)."""
    result = session.execute(
        update(Lease)
        .where(Lease.holder == holder)
        .values(expires_at=utcnow() - timedelta(seconds=1))
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def holders(session: Session) -> dict[str, tuple[str, datetime]]:
    """Every lease: name → (holder, expiry)."""
    return {
        lease.name: (lease.holder, lease.expires_at) for lease in session.scalars(select(Lease))
    }


def instance_name() -> str:
    """host:pid:random, unique per harvester process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class HeldLeases:
    """The leases this process holds, each until a local monotonic deadline."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def holds(self, name: str) -> bool:
        with self._lock:
            return self._until.get(name, 0.0) > time.monotonic()

    def set(self, name: str, until: float | None) -> None:
        with self._lock:
            if until is None:
                self._until.pop(name, None)
            else:
                self._until[name] = until

    def names(self) -> list[str]:
        with self._lock:
            now = time.monotonic()
            return sorted(n for n, until in self._until.items() if until > now)
