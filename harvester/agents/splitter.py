"""Splitter: a registered task becomes its jobs (one per jobParameters entry, or nJobs).

Steered tasks (scans) get no jobs here: the steering agent makes them point by point.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from db.models import Job, Task
from db.queue import record_creation, transition
from harvester.agents.base import Agent
from harvester.services.lifecycle import build_job
from protocol.states import TaskStatus


class Splitter(Agent):
    name = "splitter"
    batch = 50

    def run_once(self) -> None:
        if self._split():
            self.ctx.nudges.nudge("brokerage")  # committed: its jobs wait for a queue

    def _split(self) -> int:
        """Split up to ``batch`` registered tasks; how many."""
        with self.ctx.sessions.begin() as session:
            tasks = session.scalars(
                select(Task)
                .where(Task.status == TaskStatus.REGISTERED)
                .order_by(Task.id)
                .limit(self.batch)
            ).all()
            for task in tasks:
                submitted = task.parameters
                if submitted.steering:
                    transition(
                        session, task, TaskStatus.READY, reason="steered: jobs come as points"
                    )
                    continue
                per_job: list[dict[str, Any] | None] = [None] * task.n_jobs
                if submitted.jobParameters:
                    per_job = list(submitted.jobParameters)
                for index, parameters in enumerate(per_job):
                    session.add(build_job(task, index, parameters))
                session.flush()
                for job in session.scalars(select(Job).where(Job.task_id == task.id)):
                    record_creation(session, job, reason="split from task")
                transition(
                    session, task, TaskStatus.READY, reason=f"split into {len(per_job)} jobs"
                )
            return len(tasks)
