"""What the API routes and the agents share: settings, database, queues, stores."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from harvester.config import QueueConfig
from harvester.images.cache import ImageCache
from harvester.providers.base import Provider
from harvester.services.files import FileStore
from harvester.settings import HarvesterSettings


@dataclass
class HarvesterContext:
    """One per harvester process; built by :func:`harvester.app_factory.build_context`."""

    settings: HarvesterSettings
    engine: Engine
    sessions: sessionmaker[Session]
    queues: dict[str, QueueConfig]
    images: ImageCache
    files: FileStore
    providers: dict[str, Provider] = field(default_factory=dict)
    pilot_token: str | None = field(default=None, repr=False)
