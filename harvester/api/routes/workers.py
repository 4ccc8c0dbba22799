"""Worker endpoints: the harvester's batch slots."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from db.models import Worker
from db.states import WorkerStatus
from harvester.api.auth import Context, CurrentPrincipal
from harvester.api.schemas import WorkerPublic

router = APIRouter(prefix="/api/v1/workers", tags=["workers"])


@router.get("", response_model=list[WorkerPublic])
def list_workers(
    ctx: Context,
    principal: CurrentPrincipal,
    queue: str | None = None,
    status: WorkerStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[WorkerPublic]:
    """Workers newest first, filtered by queue and status."""
    query = select(Worker)
    if queue is not None:
        query = query.where(Worker.queue == queue)
    if status is not None:
        query = query.where(Worker.status == status)
    with ctx.sessions() as session:
        rows = session.scalars(query.order_by(Worker.id.desc()).limit(limit).offset(offset))
        return [WorkerPublic.model_validate(w, from_attributes=True) for w in rows]
