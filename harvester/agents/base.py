"""An agent runs one cycle at a time on its own thread; a failing cycle is logged, not fatal."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod

from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

from db.leases import GLOBAL
from harvester.context import HarvesterContext
from harvester.outage import is_conflict

log = logging.getLogger(__name__)


class Agent(ABC):
    """One periodic duty of the harvester."""

    name = "agent"
    lease: str | None = GLOBAL
    """The lease this instance must hold for the agent to run; None: the agent checks
    per-queue leases itself (or needs none)."""
    runs_first = False
    """Run one cycle before any agent starts (the lease keeper)."""

    def __init__(self, ctx: HarvesterContext, interval_s: float | None = None) -> None:
        self.ctx = ctx
        self.interval_s = interval_s if interval_s is not None else ctx.settings.agent_interval_s

    @abstractmethod
    def run_once(self) -> None:
        """Do one cycle of work; commit what it changed."""

    def stop(self) -> None:  # noqa: B027 - a hook most agents leave empty
        """Called once when the runner stops, after every agent thread ended."""


class AgentRunner:
    """Runs each agent on its own daemon thread until :meth:`stop`."""

    def __init__(self, agents: list[Agent]) -> None:
        self.agents = agents
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for agent in self.agents:
            if agent.runs_first:
                self._cycle(agent)
        for agent in self.agents:
            thread = threading.Thread(
                target=self._loop, args=(agent,), name=f"agent-{agent.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _loop(self, agent: Agent) -> None:
        """A cycle, then sleep the interval, or less when something nudges the agent (a
        nudge during a cycle ends the next sleep at once)."""
        wake = agent.ctx.nudges.event(agent.name)
        while not self._stop.is_set():
            wake.clear()
            if agent.lease is None or agent.ctx.leases.holds(agent.lease):
                self._cycle(agent)
            wake.wait(agent.interval_s)

    def _cycle(self, agent: Agent) -> None:
        try:
            agent.run_once()
        except (OperationalError, SQLAlchemyTimeoutError) as exc:
            if is_conflict(exc):  # lost a race with another transaction: the next cycle
                log.info("agent %s: cycle rolled back by a concurrent transaction", agent.name)
            else:  # logged once per outage
                agent.ctx.outage.failed(f"agent {agent.name}", exc)
        except Exception:
            log.exception(
                "agent %s: cycle failed; next cycle in %.1fs", agent.name, agent.interval_s
            )

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for agent in self.agents:
            agent.ctx.nudges.nudge(agent.name)
        for thread in self._threads:
            thread.join(timeout)
        for agent in self.agents:
            try:
                agent.stop()
            except Exception:
                log.exception("agent %s: stopping failed", agent.name)
