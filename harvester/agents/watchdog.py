"""Heartbeat watchdog: a held job whose pilot went silent fails with ``lost_heartbeat``."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select

from db.models import Job, Task, utcnow
from db.states import JOB_ACTIVE
from harvester.agents.base import Agent
from harvester.services.lifecycle import fail_job
from pilot.errors import PilotErrorCode

log = logging.getLogger(__name__)


class HeartbeatWatchdog(Agent):
    name = "watchdog"

    def run_once(self) -> None:
        timeout = self.ctx.settings.heartbeat_timeout_s
        deadline = utcnow() - timedelta(seconds=timeout)
        with self.ctx.sessions.begin() as session:
            stale = session.scalars(
                select(Job)
                .where(Job.status.in_(list(JOB_ACTIVE)), Job.heartbeat_at < deadline)
                .limit(1000)
            ).all()
            for job in stale:
                task = session.get(Task, job.task_id)
                assert task is not None
                log.warning(
                    "job %d: no heartbeat from pilot %s for %.0fs", job.id, job.pilot_id, timeout
                )
                fail_job(
                    session,
                    job,
                    task,
                    error_code=PilotErrorCode.LOST_HEARTBEAT,
                    diagnostics=f"no heartbeat from pilot {job.pilot_id} for {timeout:.0f}s",
                    actor="watchdog",
                )
