"""Sweeper: removes what ended workers left behind, once they are old enough."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from db.models import Worker, utcnow
from db.states import WORKER_TERMINAL
from harvester.agents.base import Agent
from harvester.context import HarvesterContext
from harvester.providers.base import Provider


class Sweeper(Agent):
    name = "sweeper"

    def __init__(self, ctx: HarvesterContext, providers: dict[str, Provider]) -> None:
        super().__init__(ctx)
        self.providers = providers

    def run_once(self) -> None:
        cutoff = utcnow() - timedelta(seconds=self.ctx.settings.sweep_after_s)
        with self.ctx.sessions.begin() as session:
            workers = session.scalars(
                select(Worker)
                .where(
                    Worker.status.in_(list(WORKER_TERMINAL)),
                    Worker.swept_at.is_(None),
                    Worker.ended_at < cutoff,
                )
                .limit(500)
            ).all()
            for worker in workers:
                provider = self.providers.get(worker.queue)
                if provider is not None:
                    provider.sweep(
                        worker.batch_id or "", Path(worker.workdir) if worker.workdir else None
                    )
                worker.swept_at = utcnow()
