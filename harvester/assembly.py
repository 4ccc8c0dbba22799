"""Assembling a harvester process: context, providers, agents, application.

The composition root, above everything it wires together (the API, the
agents, the providers, the stores). It is not a service: the services
(``harvester/services/``) are the functions the API and the agents call.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from sqlalchemy import event

from db.engine import make_engine, make_read_sessionmaker, make_sessionmaker
from db.migrate import upgrade
from db.models import Role
from harvester.agents.base import AgentRunner
from harvester.agents.brokerage import Brokerage
from harvester.agents.images import ImagePuller
from harvester.agents.leases import LeaseKeeper
from harvester.agents.monitor import Monitor
from harvester.agents.relay import MessengerRelay
from harvester.agents.splitter import Splitter
from harvester.agents.steering import Steering
from harvester.agents.submitter import Submitter
from harvester.agents.sweeper import Sweeper
from harvester.agents.watchdog import HeartbeatWatchdog
from harvester.api.app import create_app
from harvester.config import parse_queues
from harvester.context import HarvesterContext
from harvester.images.cache import ImageCache
from harvester.outage import DatabaseHealth
from harvester.providers.registry import make_provider
from harvester.services.queues import sync_queues
from harvester.services.tokens import create_token
from harvester.settings import HarvesterSettings
from harvester.stores.caches import IdleQueues, TokenCache
from harvester.stores.files import FileStore

log = logging.getLogger(__name__)

PILOT_TOKEN_FILE = "pilot.token"
PILOT_USER = "harvester"


def build_context(settings: HarvesterSettings, document: dict[str, Any]) -> HarvesterContext:
    """Open the database (migrated), load the queues, and set up the stores."""
    settings.home.mkdir(parents=True, exist_ok=True)
    queues = parse_queues(document, node_cores=os.cpu_count())
    providers = {q.name: make_provider(q) for q in queues}
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        sync_queues(session, queues)
    outage = DatabaseHealth()
    # a new connection is the evidence that an outage is over (pooled ones die with it)
    event.listen(engine, "connect", lambda *_: outage.succeeded())
    return HarvesterContext(
        settings=settings,
        outage=outage,
        engine=engine,
        sessions=sessions,
        reads=make_read_sessionmaker(engine),
        queues={q.name: q for q in queues},
        images=ImageCache(settings.resolved_image_cache),
        files=FileStore(settings.file_store, settings.max_upload_bytes),
        providers=providers,
        tokens=TokenCache(settings.token_cache_s),
        idle_queues=IdleQueues(settings.idle_poll_cache_s),
    )


def ensure_pilot_token(ctx: HarvesterContext) -> Path:
    """The token the harvester hands its pilots, kept in a 0600 file under HPCAF_HOME."""
    path = ctx.settings.home / PILOT_TOKEN_FILE
    if not path.exists():
        with ctx.sessions.begin() as session:
            token = create_token(session, PILOT_USER, Role.PILOT)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
    return path


def build_agents(ctx: HarvesterContext) -> AgentRunner:
    providers = ctx.providers
    messenger_dirs = sorted(
        {Path(q.messenger_dir) for q in ctx.queues.values() if q.messenger_dir is not None}
    )
    relay = [MessengerRelay(ctx, messenger_dirs)] if messenger_dirs else []
    return AgentRunner(
        [
            LeaseKeeper(ctx),
            *relay,
            Splitter(ctx),
            Steering(ctx),
            ImagePuller(ctx),
            Brokerage(ctx),
            Submitter(ctx, providers),
            Monitor(ctx, providers),
            HeartbeatWatchdog(ctx),
            Sweeper(
                ctx,
                providers,
            ),
        ]
    )


def build_app(ctx: HarvesterContext, *, with_agents: bool = True) -> FastAPI:
    runner = None
    if with_agents:
        ensure_pilot_token(ctx)
        runner = build_agents(ctx)
    return create_app(ctx, runner)


def api_app_from_environment() -> FastAPI:
    """The API alone, for ``harvester serve --only api --workers N`` (uvicorn's factory):
    each worker process reads the settings (``HPCAF_SERVE_CONFIG``) and opens its own pool."""
    from harvester.settings import load_settings

    config = os.environ.get("HPCAF_SERVE_CONFIG")
    settings, document = load_settings(Path(config) if config else None)
    return build_app(build_context(settings, document), with_agents=False)
