"""Task endpoints: submit, list, show, kill, retry, jobs, files, results, history."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, status
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from db.models import EntityKind, FileKind, Job, Role
from db.queue import state_history
from harvester.api.auth import Context, CurrentPrincipal
from harvester.api.query import MAX_PAGE
from harvester.api.views import job_public, task_public
from harvester.context import HarvesterContext
from harvester.errors import Forbidden, InvalidRequest
from harvester.identity import Principal
from harvester.request_params import Offset, TaskIdPath
from harvester.services import results as results_service
from harvester.services import scan_steering
from harvester.services import tasks as task_service
from harvester.services.endings import ended_jobs
from harvester.services.lifecycle import current_attempts
from harvester.services.listing import TASK_SORTS, TaskFilter, TimeRange, page, task_query
from protocol.bodies import MAX_ID
from protocol.files import FilePublic
from protocol.history import HistoryEntry
from protocol.jobs import JobEndings, JobPublic
from protocol.pages import Page
from protocol.states import TASK_TERMINAL, JobStatus, TaskStatus
from protocol.tasks import (
    RetryChanges,
    TaskChecked,
    TaskCreate,
    TaskPublic,
    TaskReaders,
    TaskSubmitted,
)

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TaskSubmitted)
def submit(params: TaskCreate, ctx: Context, principal: CurrentPrincipal) -> TaskSubmitted:
    """Submit a task (panda-client task parameters); answers its ``jediTaskID``."""
    with ctx.sessions.begin() as session:
        task = task_service.submit_task(session, ctx, principal, params)
        submitted = TaskSubmitted(jediTaskID=task.id, status=task.status)
    ctx.nudges.nudge("splitter")  # committed: split it now, not at the next cycle
    return submitted


@router.post("/check", response_model=TaskChecked)
def check(params: TaskCreate, ctx: Context, principal: CurrentPrincipal) -> TaskChecked:
    """A dry run of a submission (``--noSubmit``): every check ``POST /tasks`` makes, the
    same 4xx when one fails; nothing is stored."""
    with ctx.sessions() as session:
        try:
            task = task_service.submit_task(session, ctx, principal, params, store_files=False)
            return TaskChecked(nJobs=task.n_jobs, site=task.site)
        finally:
            session.rollback()


@router.get("", response_model=Page[TaskPublic])
def list_tasks(
    ctx: Context,
    principal: CurrentPrincipal,
    owner: Annotated[str | None, Query(description="a user, or '*' for everyone")] = None,
    status: Annotated[list[TaskStatus] | None, Query(description="repeatable")] = None,
    kind: Annotated[str | None, Query(description="runcontainer, pyhf_fit, hpo_eval")] = None,
    name: Annotated[str | None, Query(description="pattern with * and ?")] = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    sort: Annotated[
        str,
        Query(description="id, created_at, modified_at, status, name, owner; '-' for descending"),
    ] = "-id",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Offset = 0,
) -> Page[TaskPublic]:
    """Tasks, newest first by default; your own unless ``owner`` names another user (or *)."""
    if principal.role is Role.PILOT:
        raise Forbidden("a pilot token cannot list tasks")
    if owner is None and not principal.is_admin:
        owner = principal.user
    f = TaskFilter(
        owner=None if owner == "*" else owner,
        status=list(status or []),
        kind=kind,
        name=name,
        created=TimeRange(created_after, created_before),
    )
    with ctx.sessions() as session:
        total, rows = page(
            session, task_query(f), sort=sort, sorts=TASK_SORTS, limit=limit, offset=offset
        )
        counts = task_service.job_counts(session, [t.id for t in rows])
        items = [task_public(t, counts.get(t.id, {})) for t in rows]
        return Page[TaskPublic](total=total, limit=limit, offset=offset, items=items)


@router.get("/{task_id}", response_model=TaskPublic)
def show(task_id: TaskIdPath, ctx: Context, principal: CurrentPrincipal) -> TaskPublic:
    """One task with its parameters and job counts by status."""
    with ctx.sessions() as session:
        principal.require(Role.USER)
        task = task_service.get_task(session, task_id)
        counts = task_service.job_counts(session, [task_id]).get(task_id, {})
        return task_public(task, counts, with_params=True)


@router.post("/{task_id}/kill", response_model=TaskPublic)
def kill(task_id: TaskIdPath, ctx: Context, principal: CurrentPrincipal) -> TaskPublic:
    """Abort the task: pending jobs cancelled, running ones killed by their pilots."""
    with ctx.sessions.begin() as session:
        task = task_service.kill_task(session, principal, task_id)
        counts = task_service.job_counts(session, [task_id]).get(task_id, {})
        killed = task_public(task, counts)
    ctx.endings.notify_all()
    return killed


@router.post("/{task_id}/jobs/{job_index}/kill", response_model=JobPublic)
def kill_job(
    task_id: TaskIdPath,
    job_index: Annotated[int, Path(ge=0, le=MAX_ID)],
    ctx: Context,
    principal: CurrentPrincipal,
) -> JobPublic:
    """Kill one job of the task (a cancelled ``hpcaf`` future): cancelled if it waits, told
    to its pilot if it runs. The task goes on with its other jobs."""
    with ctx.sessions.begin() as session:
        job = task_service.kill_job(session, principal, task_id, job_index)
        killed = job_public(session, job)
    ctx.endings.notify_all()
    return killed


@router.post("/{task_id}/retry", response_model=TaskPublic)
def retry(
    task_id: TaskIdPath,
    ctx: Context,
    principal: CurrentPrincipal,
    changes: RetryChanges | None = None,
) -> TaskPublic:
    """New attempts for the jobs that failed or were cancelled; the body, when given,
    changes their memory, walltime or sites (``pbook retry --memory …``)."""
    with ctx.sessions.begin() as session:
        task, _ = task_service.retry_task(session, ctx, principal, task_id, changes)
        counts = task_service.job_counts(session, [task_id]).get(task_id, {})
        return task_public(task, counts)


@router.patch("/{task_id}/readers", response_model=TaskPublic)
def share(
    task_id: TaskIdPath, body: TaskReaders, ctx: Context, principal: CurrentPrincipal
) -> TaskPublic:
    """Share the task's logs, outputs and results with other users, or stop (owner only)."""
    with ctx.sessions.begin() as session:
        task = task_service.share_task(session, principal, task_id, body.add, body.remove)
        counts = task_service.job_counts(session, [task_id]).get(task_id, {})
        return task_public(task, counts)


@router.get("/{task_id}/jobs", response_model=list[JobPublic])
def jobs(
    task_id: TaskIdPath,
    ctx: Context,
    principal: CurrentPrincipal,
    status: JobStatus | None = None,
    all_attempts: bool = True,
) -> list[JobPublic]:
    """Every attempt of every job of the task (or only the newest attempts)."""
    with ctx.sessions() as session:
        principal.require(Role.USER)
        task_service.get_task(session, task_id)
        if all_attempts:
            query = select(Job).where(Job.task_id == task_id)
            if status is not None:
                query = query.where(Job.status == status)
            rows = list(session.scalars(query.order_by(Job.job_index, Job.attempt_nr)))
        else:
            rows = [
                j
                for j in current_attempts(session, task_id)
                if status is None or j.status is status
            ]
        return [job_public(session, j) for j in rows]


@router.get("/{task_id}/files", response_model=list[FilePublic])
def files(
    task_id: TaskIdPath, ctx: Context, principal: CurrentPrincipal, kind: FileKind | None = None
) -> list[FilePublic]:
    """Registered outputs and logs of the task (its owner, its readers, admins)."""
    with ctx.sessions() as session:
        task = task_service.get_task(session, task_id)
        task_service.check_reader(principal, task, action="read its files")
        return [
            FilePublic.model_validate(f, from_attributes=True)
            for f in task_service.task_files(session, task_id, kind)
        ]


@router.get("/{task_id}/results")
def results(task_id: TaskIdPath, ctx: Context, principal: CurrentPrincipal) -> dict[str, Any]:
    """The task's results: output files, and merged fit results for fit tasks."""
    with ctx.sessions() as session:
        task = task_service.get_task(session, task_id)
        task_service.check_reader(principal, task, action="read its results")
        return results_service.task_results(session, ctx, task)


@router.get("/{task_id}/endings", response_model=JobEndings)
async def endings(
    task_id: TaskIdPath,
    ctx: Context,
    principal: CurrentPrincipal,
    after: Annotated[int, Query(ge=0, le=2**62, description="the cursor of the last answer")] = 0,
    wait_s: Annotated[
        float, Query(ge=0, le=60, description="hold an empty answer up to this long")
    ] = 0.0,
    inline_max: Annotated[
        int, Query(ge=0, le=1 << 20, description="outputs up to this size come with content")
    ] = 0,
) -> JobEndings:
    """Jobs of the task that ended after ``after`` (outputs included), oldest first; with
    ``wait_s``, held until one ends or the task does (a long poll: results stream to
    ``hpcaf.Executor`` without a request per job per second)."""
    deadline = time.monotonic() + wait_s
    while True:
        with ctx.endings.watch(task_id) as ended:
            found = await run_in_threadpool(_endings, ctx, principal, task_id, after, inline_max)
            left = deadline - time.monotonic()
            if found.jobs or found.task_status in TASK_TERMINAL or left <= 0 or ctx.endings.closed:
                return found
            # another instance's endings cannot wake this one: look again within a second
            await ended.wait(min(left, 1.0))


def _endings(
    ctx: HarvesterContext, principal: Principal, task_id: int, after: int, inline_max: int
) -> JobEndings:
    with ctx.reads() as session:
        task = task_service.get_task(session, task_id)
        task_service.check_reader(principal, task, action="read its results")
        return ended_jobs(session, task, after, files=ctx.files, inline_max=inline_max)


@router.get("/{task_id}/points")
def points(task_id: TaskIdPath, ctx: Context, principal: CurrentPrincipal) -> dict[str, Any]:
    """The points of a scan (phpo, pfit --adaptive) with their metrics and the best so far."""
    with ctx.sessions() as session:
        task = task_service.get_task(session, task_id)
        task_service.check_reader(principal, task, action="read its results")
        if not task.parameters.steering:
            raise InvalidRequest(f"task {task_id} is not a scan; it has no points")
        return scan_steering.scan_summary(session, task)


@router.get("/{task_id}/history", response_model=list[HistoryEntry])
def history(task_id: TaskIdPath, ctx: Context, principal: CurrentPrincipal) -> list[HistoryEntry]:
    """Every state change of the task, oldest first."""
    with ctx.sessions() as session:
        task_service.get_task(session, task_id)
        rows = state_history(session, EntityKind.TASK, task_id)
        return [HistoryEntry.model_validate(r, from_attributes=True) for r in rows]
