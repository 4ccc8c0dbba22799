"""The lease keeper: takes and renews this instance's leases, and says which it holds.

It runs on its own thread like the other agents, every third of ``lease_s``. An
agent acts on a queue only while :class:`HeldLeases` says this instance holds
that queue's lease, and the agents that act on all tasks only while it holds
:data:`db.leases.GLOBAL`. A holding is trusted locally only until a safety
margin before its expiry, so an instance whose renewals stall stops acting
before another may take over.
"""

from __future__ import annotations

import logging
import time

from db import leases
from harvester.agents.base import Agent
from harvester.context import HarvesterContext

log = logging.getLogger(__name__)

SAFETY = 0.2
"""Fraction of ``lease_s`` before the expiry at which this instance stops trusting a lease."""


class LeaseKeeper(Agent):
    """Takes free or expired leases, renews its own, gives them all back on stop."""

    name = "leases"
    lease = None
    runs_first = True

    def __init__(self, ctx: HarvesterContext) -> None:
        super().__init__(ctx, ctx.settings.lease_s / 3)
        self.ttl_s = ctx.settings.lease_s

    def wanted(self) -> list[str]:
        return [leases.GLOBAL, *(leases.queue_lease(q) for q in self.ctx.queues)]

    def run_once(self) -> None:
        held = self.ctx.leases
        for name in self.wanted():
            started = time.monotonic()
            with self.ctx.sessions.begin() as session:
                expiry = leases.take(session, name, held.holder, self.ttl_s)
            had = held.holds(name)
            held.set(name, started + self.ttl_s * (1 - SAFETY) if expiry else None)
            if expiry and not had:
                log.info("lease %s taken by %s", name, held.holder)
            elif had and not expiry:
                log.warning("lease %s lost to another instance", name)

    def stop(self) -> None:
        """Give every lease back, so that another instance takes over at once."""
        for name in self.wanted():
            self.ctx.leases.set(name, None)
        with self.ctx.sessions.begin() as session:
            n = leases.give_back(session, self.ctx.leases.holder)
        log.info("gave back %d lease(s)", n)
