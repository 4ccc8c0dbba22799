"""Heartbeat watchdog: a held job whose pilot went silent fails with ``lost_heartbeat``."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Job, Task, utcnow
from db.queue import for_change
from db.states import JOB_ACTIVE
from harvester.agents.base import Agent
from harvester.context import HarvesterContext
from harvester.services.lifecycle import fail_job
from protocol.error_codes import PilotErrorCode

log = logging.getLogger(__name__)


def fail_silent_jobs(session: Session, timeout_s: float) -> int:
    """Fail (and retry) the held jobs with no heartbeat for ``timeout_s``; how many."""
    deadline = utcnow() - timedelta(seconds=timeout_s)
    stale = session.scalars(
        for_change(  # a job being reported right now is alive: skipped
            select(Job)
            .where(Job.status.in_(list(JOB_ACTIVE)), Job.heartbeat_at < deadline)
            .order_by(Job.id)
            .limit(1000),
            skip_locked=True,
        )
    ).all()
    for job in stale:
        task = session.get(Task, job.task_id)
        assert task is not None
        log.warning("job %d: no heartbeat from pilot %s for %.0fs", job.id, job.pilot_id, timeout_s)
        fail_job(
            session,
            job,
            task,
            error_code=PilotErrorCode.LOST_HEARTBEAT,
            diagnostics=f"no heartbeat from pilot {job.pilot_id} for {timeout_s:.0f}s",
            actor="watchdog",
        )
    return len(stale)


class HeartbeatWatchdog(Agent):
    """Fails held jobs whose pilot stopped heartbeating.

    Not while the harvester itself could not hear them: for one heartbeat
    timeout after this process started (the harvester was down before) and after
    the database was last unreachable (heartbeats could not be recorded), it
    fails nothing; live pilots have heartbeated again by then.
    """

    name = "watchdog"

    def __init__(self, ctx: HarvesterContext) -> None:
        super().__init__(ctx)
        self._deaf_until = time.monotonic() + ctx.settings.heartbeat_timeout_s

    def run_once(self) -> None:
        timeout = self.ctx.settings.heartbeat_timeout_s
        last_failure = self.ctx.outage.last_failure
        if last_failure is not None:
            self._deaf_until = max(self._deaf_until, last_failure + timeout)
        if time.monotonic() < self._deaf_until:
            return
        with self.ctx.sessions.begin() as session:
            fail_silent_jobs(session, timeout)
