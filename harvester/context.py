"""What the API routes and the agents share: settings, database, queues, stores."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.leases import HeldLeases, instance_name
from harvester.config import QueueConfig
from harvester.images.cache import ImageCache
from harvester.outage import DatabaseHealth
from harvester.providers.base import Provider
from harvester.settings import HarvesterSettings
from harvester.stores.caches import IdleQueues, TokenCache
from harvester.stores.files import FileStore
from harvester.stores.signals import Nudges, Wakeups


@dataclass
class HarvesterContext:
    """One per harvester process; built by :func:`harvester.assembly.build_context`."""

    settings: HarvesterSettings
    engine: Engine
    sessions: sessionmaker[Session]
    reads: sessionmaker[Session]
    """Read-only sessions, no write lock on SQLite (:func:`db.engine.make_read_sessionmaker`)."""
    queues: dict[str, QueueConfig]
    images: ImageCache
    files: FileStore
    providers: dict[str, Provider] = field(default_factory=dict)
    pilot_token: str | None = field(default=None, repr=False)
    tokens: TokenCache = field(default_factory=lambda: TokenCache(0.0))
    idle_queues: IdleQueues = field(default_factory=lambda: IdleQueues(0.0))
    outage: DatabaseHealth = field(default_factory=DatabaseHealth)
    leases: HeldLeases = field(default_factory=lambda: HeldLeases(instance_name()))
    """The leases this process holds (kept by :class:`harvester.agents.leases.LeaseKeeper`)."""
    nudges: Nudges = field(default_factory=Nudges)
    """Wakes an agent before its interval ends (a task submitted wakes the splitter)."""
    activations: Wakeups = field(default_factory=Wakeups)
    """Jobs activated for a queue (key: the queue): wakes pilots' long-polling acquires."""
    endings: Wakeups = field(default_factory=Wakeups)
    """A job ended: wakes clients following their tasks' endings (``/tasks/{id}/endings``)."""
