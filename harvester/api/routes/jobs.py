"""Job endpoints: show, log, history."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import EntityKind, File, FileKind, Job, Role, StateHistory
from harvester.api.auth import Context, CurrentPrincipal
from harvester.api.schemas import HistoryEntry, JobPublic
from harvester.api.views import job_public
from harvester.errors import NotFoundError
from harvester.services.tasks import check_owner, get_task

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])


def _job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"job {job_id} not found")
    return job


@router.get("/{job_id}", response_model=JobPublic)
def show(job_id: int, ctx: Context, principal: CurrentPrincipal) -> JobPublic:
    """One job attempt: state, queue, worker and batch id, exit and error codes."""
    principal.require(Role.USER)
    with ctx.sessions() as session:
        return job_public(session, _job(session, job_id))


@router.get("/{job_id}/log", response_class=PlainTextResponse)
def log(job_id: int, ctx: Context, principal: CurrentPrincipal) -> PlainTextResponse:
    """The payload's log (stdout and stderr), available once the attempt ended."""
    with ctx.sessions() as session:
        job = _job(session, job_id)
        check_owner(principal, get_task(session, job.task_id), action="read its logs")
        row = session.scalar(select(File).where(File.job_id == job_id, File.kind == FileKind.LOG))
        if row is None:
            raise NotFoundError(
                f"job {job_id} has no log yet (status {job.status.value}); logs are kept when "
                "an attempt ends"
            )
        text = ctx.files.path(row.sha256).read_text(errors="replace")
        return PlainTextResponse(text)


@router.get("/{job_id}/history", response_model=list[HistoryEntry])
def history(job_id: int, ctx: Context, principal: CurrentPrincipal) -> list[HistoryEntry]:
    """Every state change of the job attempt, oldest first."""
    principal.require(Role.USER)
    with ctx.sessions() as session:
        _job(session, job_id)
        rows = session.scalars(
            select(StateHistory)
            .where(StateHistory.entity == EntityKind.JOB, StateHistory.entity_id == job_id)
            .order_by(StateHistory.id)
        )
        return [HistoryEntry.model_validate(r, from_attributes=True) for r in rows]
