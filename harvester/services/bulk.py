"""Bulk job updates (PanDA's ``updateJobsInBulk``): many pilot reports in one transaction.

The common reports are applied set-based: ``starting``/``running`` moves and
plain ``finished`` reports (outputs and log registered with one INSERT) take a
handful of statements for the whole batch instead of a few per job. Anything
else (failures with their retry logic, scans, repeats of final reports, jobs
the pilot does not hold) goes through :func:`harvester.services.dispatch.update_job`
one by one, each in a savepoint, so one bad item is answered with its error
and the others still apply.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import func, insert, select, tuple_
from sqlalchemy.orm import Session

from db.models import File, FileKind, Job, Task, utcnow
from db.queue import advance_jobs
from db.states import JOB_TERMINAL, allowed
from harvester.context import HarvesterContext
from harvester.errors import HarvesterError, InvalidRequest
from harvester.identity import Principal
from harvester.services.dispatch import (
    _require_pilot,
    keep_carried_content,
    log_lfn,
    output_lfn,
    update_job,
)
from harvester.services.lifecycle import roll_up_at_commit
from harvester.stores.files import check_file_name
from protocol.pilot import BulkUpdateItem, UpdateJobReply, UpdateJobRequest
from protocol.states import JobStatus

PROGRESS = (JobStatus.STARTING, JobStatus.RUNNING)


def update_jobs_bulk(
    session: Session, ctx: HarvesterContext, principal: Principal, reqs: list[UpdateJobRequest]
) -> list[BulkUpdateItem]:
    _require_pilot(principal)
    ids = [r.job_id for r in reqs]
    if len(set(ids)) != len(ids):
        raise InvalidRequest("a bulk update names each job at most once")
    jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(ids)))}
    tasks = {
        t.id: t
        for t in session.scalars(
            select(Task).where(Task.id.in_({j.task_id for j in jobs.values()}))
        )
    }
    progress: dict[tuple[str, JobStatus], dict[int, JobStatus]] = defaultdict(dict)
    finishing: list[UpdateJobRequest] = []
    one_by_one: list[UpdateJobRequest] = []
    for r in reqs:
        job = jobs.get(r.job_id)
        wanted = JobStatus(r.state)
        simple = (
            job is not None
            and job.pilot_id == r.pilot_id
            and job.status not in JOB_TERMINAL
            and job.status is not wanted
            and allowed(job.status, wanted)
            and r.metrics is None
            and r.started_at is None  # its running state is recorded on the careful path
        )
        if simple and job is not None and wanted in PROGRESS:
            progress[(r.pilot_id, wanted)][job.id] = job.status
        elif (
            simple
            and job is not None
            and wanted is JobStatus.FINISHED
            and not tasks[job.task_id].parameters.steering
        ):
            finishing.append(r)
        else:
            one_by_one.append(r)

    replies: dict[int, BulkUpdateItem] = {}
    touched_tasks: set[int] = set()
    now = utcnow()
    for (pilot_id, wanted), moves in progress.items():
        values: dict[str, Any] = {"heartbeat_at": now}
        if wanted is JobStatus.RUNNING:
            values["started_at"] = func.coalesce(Job.started_at, now)
        moved = set(
            advance_jobs(
                session, moves, wanted, pilot_id=pilot_id, reason="reported by pilot", values=values
            )
        )
        for job_id in moves:
            if job_id in moved:
                replies[job_id] = _reply(job_id, wanted, changed=True)
                touched_tasks.add(jobs[job_id].task_id)
            else:
                one_by_one.append(next(r for r in reqs if r.job_id == job_id))
    if finishing:
        _finish(session, ctx, jobs, tasks, finishing, replies, touched_tasks, one_by_one)
    session.flush()
    session.expire_all()
    for task_id in touched_tasks:
        task = session.get(Task, task_id)
        if task is not None:
            roll_up_at_commit(session, task)
    for r in one_by_one:
        try:
            with session.begin_nested():
                reply = update_job(session, ctx, principal, r)
            replies[r.job_id] = BulkUpdateItem(**reply.model_dump())
        except HarvesterError as exc:
            current = session.get(Job, r.job_id)
            replies[r.job_id] = BulkUpdateItem(
                job_id=r.job_id,
                status=current.status if current else None,
                changed=False,
                error=str(exc),
                status_code=exc.status_code,
            )
    return [replies[r.job_id] for r in reqs]


def _reply(job_id: int, status: JobStatus, *, changed: bool) -> BulkUpdateItem:
    return BulkUpdateItem(
        **UpdateJobReply(job_id=job_id, status=status, changed=changed).model_dump()
    )


def _finish(
    session: Session,
    ctx: HarvesterContext,
    jobs: dict[int, Job],
    tasks: dict[int, Task],
    finishing: list[UpdateJobRequest],
    replies: dict[int, BulkUpdateItem],
    touched_tasks: set[int],
    one_by_one: list[UpdateJobRequest],
) -> None:
    """Move plain finished reports with one UPDATE per (pilot, exit code), then register the
    outputs and logs of the jobs that moved with one INSERT."""
    rows: dict[int, list[dict[str, Any]]] = {}
    ready: list[UpdateJobRequest] = []
    for r in finishing:
        job, task = jobs[r.job_id], tasks[jobs[r.job_id].task_id]
        try:
            rows[job.id] = _file_rows(ctx, job, task, r)
            ready.append(r)
        except HarvesterError as exc:  # this item's fault (a bad or too large carried file)
            replies[r.job_id] = BulkUpdateItem(
                job_id=r.job_id,
                status=job.status,
                changed=False,
                error=str(exc),
                status_code=exc.status_code,
            )
    groups: dict[tuple[str, int], dict[int, JobStatus]] = defaultdict(dict)
    for r in ready:
        exit_code = r.exit_code if r.exit_code is not None else 0
        groups[(r.pilot_id, exit_code)][r.job_id] = jobs[r.job_id].status
    now = utcnow()
    moved: set[int] = set()
    for (pilot_id, exit_code), moves in groups.items():
        moved |= set(
            advance_jobs(
                session,
                moves,
                JobStatus.FINISHED,
                pilot_id=pilot_id,
                reason="finished (bulk report)",
                values={"exit_code": exit_code, "heartbeat_at": now},
            )
        )
    for r in ready:
        if r.job_id in moved:
            replies[r.job_id] = _reply(r.job_id, JobStatus.FINISHED, changed=True)
            touched_tasks.add(jobs[r.job_id].task_id)
        else:  # it changed under us: the careful path decides
            one_by_one.append(r)
    new_rows = [row for job_id in moved for row in rows[job_id]]
    if new_rows:
        existing = set(
            session.execute(
                select(File.dataset, File.name).where(
                    tuple_(File.dataset, File.name).in_(
                        [(x["dataset"], x["name"]) for x in new_rows]
                    )
                )
            ).tuples()
        )
        new_rows = [x for x in new_rows if (x["dataset"], x["name"]) not in existing]
        if new_rows:
            session.execute(insert(File), new_rows)


def _file_rows(
    ctx: HarvesterContext, job: Job, task: Task, r: UpdateJobRequest
) -> list[dict[str, Any]]:
    """The File rows of a finished report, after checking each blob is there and whole."""
    declared = set(task.parameters.outputs)
    if {o.name for o in r.outputs} != declared:
        raise InvalidRequest(
            f"job {job.id} must report exactly its declared outputs "
            f"({', '.join(sorted(declared)) or 'none'})"
        )
    files = [(o, FileKind.OUTPUT, output_lfn(task, job, o.name), task.out_ds) for o in r.outputs]
    if r.log is not None:
        log_name = log_lfn(task, job)
        files.append((r.log, FileKind.LOG, log_name, f"{task.out_ds}.log"))
    rows = []
    for item, kind, name, dataset in files:
        check_file_name(item.name, what="output name")
        keep_carried_content(ctx, item)
        if not ctx.files.exists(item.sha256) or ctx.files.size(item.sha256) != item.size:
            raise InvalidRequest(f"{item.name}: no uploaded file with that sha256 and size")
        rows.append(
            {
                "sha256": item.sha256,
                "size": item.size,
                "name": name,
                "dataset": dataset,
                "owner": task.owner,
                "kind": kind,
                "task_id": task.id,
                "job_id": job.id,
                "created_at": utcnow(),
            }
        )
    return rows
