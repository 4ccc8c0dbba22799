"""Job endpoints: list with filters, summaries (counts, errors), show, log, history."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import PlainTextResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import EntityKind, File, FileKind, Job, Role
from db.queue import state_history
from harvester.api.auth import Context, CurrentPrincipal
from harvester.api.query import MAX_PAGE
from harvester.api.views import job_public
from harvester.errors import NotFoundError
from harvester.request_params import JobIdPath, Offset
from harvester.services import summaries
from harvester.services.listing import JOB_SORTS, JobFilter, TimeRange, job_query, page
from harvester.services.tasks import check_reader, get_task
from protocol.bodies import MAX_ID
from protocol.history import HistoryEntry
from protocol.jobs import ErrorRow, JobPublic, JobSummary
from protocol.pages import Page
from protocol.states import JobStatus

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])


def _job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"job {job_id} not found")
    return job


def _filter(
    task: Annotated[int | None, Query(ge=1, le=MAX_ID, description="jediTaskID")] = None,
    owner: Annotated[str | None, Query(description="owner of the task")] = None,
    status: Annotated[list[JobStatus] | None, Query(description="repeatable")] = None,
    queue: str | None = None,
    error_code: Annotated[
        int | None, Query(ge=0, le=MAX_ID, description="pilot error code")
    ] = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    ended_after: datetime | None = None,
    ended_before: datetime | None = None,
) -> JobFilter:
    return JobFilter(
        task=task,
        owner=owner,
        status=list(status or []),
        queue=queue,
        error_code=error_code,
        created=TimeRange(created_after, created_before),
        ended=TimeRange(ended_after, ended_before),
    )


Filter = Annotated[JobFilter, Depends(_filter)]


@router.get("", response_model=Page[JobPublic])
def list_jobs(
    ctx: Context,
    principal: CurrentPrincipal,
    f: Filter,
    sort: Annotated[
        str, Query(description="id, created_at, ended_at, status, queue, task; '-' descending")
    ] = "-id",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Offset = 0,
) -> Page[JobPublic]:
    """Job attempts (PandaIDs), newest first by default, filtered and paged."""
    principal.require(Role.USER)
    with ctx.sessions() as session:
        total, rows = page(
            session, job_query(f), sort=sort, sorts=JOB_SORTS, limit=limit, offset=offset
        )
        items = [job_public(session, j) for j in rows]
        return Page[JobPublic](total=total, limit=limit, offset=offset, items=items)


@router.get("/summary", response_model=JobSummary)
def summary(
    ctx: Context,
    principal: CurrentPrincipal,
    f: Filter,
    group_by: Literal["queue", "task", "status"] = "queue",
) -> JobSummary:
    """Job attempts by status per queue (or per task, or by status alone)."""
    principal.require(Role.USER)
    with ctx.sessions() as session:
        rows = summaries.job_counts(session, f, group_by)
    return JobSummary.model_validate({"group_by": group_by, "rows": rows})


@router.get("/errors", response_model=list[ErrorRow])
def errors(ctx: Context, principal: CurrentPrincipal, f: Filter) -> list[ErrorRow]:
    """Error codes of failed attempts with counts, tasks hit and an example diagnostic."""
    principal.require(Role.USER)
    with ctx.sessions() as session:
        return [ErrorRow.model_validate(r) for r in summaries.error_summary(session, f)]


@router.get("/{job_id}", response_model=JobPublic)
def show(job_id: JobIdPath, ctx: Context, principal: CurrentPrincipal) -> JobPublic:
    """One job attempt: state, queue, worker and batch id, exit and error codes."""
    principal.require(Role.USER)
    with ctx.sessions() as session:
        return job_public(session, _job(session, job_id))


@router.get("/{job_id}/log", response_class=PlainTextResponse)
def log(job_id: JobIdPath, ctx: Context, principal: CurrentPrincipal) -> PlainTextResponse:
    """The payload's log (stdout and stderr), available once the attempt ended."""
    with ctx.sessions() as session:
        job = _job(session, job_id)
        check_reader(principal, get_task(session, job.task_id), action="read its logs")
        row = session.scalar(select(File).where(File.job_id == job_id, File.kind == FileKind.LOG))
        if row is None:
            raise NotFoundError(
                f"job {job_id} has no log yet (status {job.status.value}); logs are kept when "
                "an attempt ends"
            )
        text = ctx.files.path(row.sha256).read_text(errors="replace")
        return PlainTextResponse(text)


@router.get("/{job_id}/history", response_model=list[HistoryEntry])
def history(job_id: JobIdPath, ctx: Context, principal: CurrentPrincipal) -> list[HistoryEntry]:
    """Every state change of the job attempt, oldest first."""
    principal.require(Role.USER)
    with ctx.sessions() as session:
        _job(session, job_id)
        rows = state_history(session, EntityKind.JOB, job_id)
        return [HistoryEntry.model_validate(r, from_attributes=True) for r in rows]
