"""Splitter: a registered task becomes its jobs (one per jobParameters entry, or nJobs)."""

from __future__ import annotations

from sqlalchemy import select

from db.models import Job, Task
from db.queue import record_creation, transition
from db.states import JobStatus, TaskStatus
from harvester.agents.base import Agent
from harvester.architecture import parse_architecture
from harvester.errors import InvalidRequest


class Splitter(Agent):
    name = "splitter"
    batch = 50

    def run_once(self) -> None:
        with self.ctx.sessions.begin() as session:
            tasks = session.scalars(
                select(Task)
                .where(Task.status == TaskStatus.REGISTERED)
                .order_by(Task.id)
                .limit(self.batch)
            ).all()
            for task in tasks:
                params = task.params
                try:
                    gpu_job = parse_architecture(task.architecture).needs_gpu
                except InvalidRequest:
                    gpu_job = False
                per_job = params.get("jobParameters") or [None] * task.n_jobs
                for index, parameters in enumerate(per_job):
                    job = Job(
                        task_id=task.id,
                        job_index=index,
                        attempt_nr=1,
                        status=JobStatus.DEFINED,
                        spec={"parameters": parameters} if parameters is not None else {},
                        cores=int(params.get("coreCount", 1)),
                        memory_mb=int(params.get("ramCount") or 0),
                        walltime_s=int(params.get("maxWalltime") or 0),
                        priority=task.priority,
                        gpus=1 if gpu_job else 0,
                    )
                    session.add(job)
                session.flush()
                for job in session.scalars(select(Job).where(Job.task_id == task.id)):
                    record_creation(session, job, reason="split from task")
                transition(
                    session, task, TaskStatus.READY, reason=f"split into {len(per_job)} jobs"
                )
