"""Steering: keep each running scan fed with new points, up to its parallelism."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from db.models import Task
from db.queue import for_change
from harvester.agents.base import Agent
from harvester.services.scan_steering import break_task, steer
from protocol.states import TaskStatus

log = logging.getLogger(__name__)


class Steering(Agent):
    name = "steering"

    def run_once(self) -> None:
        with self.ctx.sessions() as session:
            task_ids = list(
                session.scalars(
                    select(Task.id)
                    .where(
                        Task.status.in_([TaskStatus.READY, TaskStatus.RUNNING]),
                        Task.kind.in_(["hpo_eval", "pyhf_fit"]),
                    )
                    .order_by(Task.id)
                )
            )
        for task_id in task_ids:
            self._steer_one(task_id)

    def _steer_one(self, task_id: int) -> None:
        """One transaction per task: the task row is locked while its points are made."""
        try:
            with self.ctx.sessions.begin() as session:
                task = session.scalar(
                    for_change(select(Task).where(Task.id == task_id), skip_locked=True)
                )
                if (
                    task is None
                    or not task.parameters.steering
                    or task.status not in (TaskStatus.READY, TaskStatus.RUNNING)
                ):
                    return
                created = steer(session, task)
                if created:
                    log.info("task %s: %d new scan points", task_id, created)
        except IntegrityError:
            log.info("task %s: another steerer made the same point first; retrying", task_id)
        except SQLAlchemyError:
            raise  # the database, not the scan: the next cycle tries again
        except Exception as exc:
            log.exception("task %s: steering failed; the task is broken", task_id)
            with self.ctx.sessions.begin() as session:
                task = session.get(Task, task_id)
                if task is not None:
                    break_task(session, task, f"steering failed: {type(exc).__name__}: {exc}")
