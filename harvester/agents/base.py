"""An agent runs one cycle at a time on its own thread; a failing cycle is logged, not fatal."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod

from harvester.context import HarvesterContext

log = logging.getLogger(__name__)


class Agent(ABC):
    """One periodic duty of the harvester."""

    name = "agent"

    def __init__(self, ctx: HarvesterContext, interval_s: float | None = None) -> None:
        self.ctx = ctx
        self.interval_s = interval_s if interval_s is not None else ctx.settings.agent_interval_s

    @abstractmethod
    def run_once(self) -> None:
        """Do one cycle of work; commit what it changed."""


class AgentRunner:
    """Runs each agent on its own daemon thread until :meth:`stop`."""

    def __init__(self, agents: list[Agent]) -> None:
        self.agents = agents
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for agent in self.agents:
            thread = threading.Thread(
                target=self._loop, args=(agent,), name=f"agent-{agent.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _loop(self, agent: Agent) -> None:
        while not self._stop.is_set():
            try:
                agent.run_once()
            except Exception:
                log.exception(
                    "agent %s: cycle failed; next cycle in %.1fs", agent.name, agent.interval_s
                )
            self._stop.wait(agent.interval_s)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
