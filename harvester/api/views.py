"""ORM rows to the public replies of :mod:`protocol` (tasks and jobs)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from db.models import Job, Task, Worker
from harvester.services.summaries import progress
from protocol.jobs import JobPublic
from protocol.tasks import TaskPublic


def task_public(task: Task, counts: dict[str, int], *, with_params: bool = False) -> TaskPublic:
    return TaskPublic(
        id=task.id,
        name=task.name,
        owner=task.owner,
        status=task.status,
        kind=task.kind,
        image=task.image,
        image_digest=task.image_digest,
        image_message=task.image_message,
        out_ds=task.out_ds,
        n_jobs=task.n_jobs,
        site=task.site,
        architecture=task.architecture,
        priority=task.priority,
        max_attempt=task.max_attempt,
        error_dialog=task.error_dialog,
        readers=list(task.readers),
        created_at=task.created_at,
        modified_at=task.modified_at,
        started_at=task.started_at,
        ended_at=task.ended_at,
        job_counts=counts,
        progress=progress(counts, task.n_jobs),
        # the document as submitted and stored (panda-client's names), not a re-serialisation
        params=dict(task.params) if with_params else None,
    )


def job_public(session: Session, job: Job) -> JobPublic:
    public = JobPublic.model_validate(job, from_attributes=True)
    if job.worker_id is not None:
        worker = session.get(Worker, job.worker_id)
        public.batch_id = worker.batch_id if worker else None
    return public
