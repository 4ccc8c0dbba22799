"""Worker endpoints: the harvester's batch slots, listed and counted per queue."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from harvester.api.auth import Context, CurrentPrincipal
from harvester.api.query import MAX_PAGE
from harvester.request_params import Offset
from harvester.services.listing import WORKER_SORTS, TimeRange, WorkerFilter, page, worker_query
from harvester.services.queues import worker_counts
from protocol.pages import Page
from protocol.queues import WorkerPublic
from protocol.states import WorkerStatus

router = APIRouter(prefix="/api/v1/workers", tags=["workers"])


@router.get("", response_model=Page[WorkerPublic])
def list_workers(
    ctx: Context,
    principal: CurrentPrincipal,
    queue: str | None = None,
    status: Annotated[list[WorkerStatus] | None, Query(description="repeatable")] = None,
    batch_id: str | None = None,
    node: Annotated[str | None, Query(description="pattern with * and ?")] = None,
    submitted_after: datetime | None = None,
    submitted_before: datetime | None = None,
    sort: Annotated[
        str, Query(description="id, submitted_at, ended_at, status, queue; '-' descending")
    ] = "-id",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Offset = 0,
) -> Page[WorkerPublic]:
    """Workers newest first by default, filtered by queue, state, batch id, node and time."""
    f = WorkerFilter(
        queue=queue,
        status=list(status or []),
        batch_id=batch_id,
        node=node,
        submitted=TimeRange(submitted_after, submitted_before),
    )
    with ctx.sessions() as session:
        total, rows = page(
            session, worker_query(f), sort=sort, sorts=WORKER_SORTS, limit=limit, offset=offset
        )
        items = [WorkerPublic.model_validate(w, from_attributes=True) for w in rows]
        return Page[WorkerPublic](total=total, limit=limit, offset=offset, items=items)


@router.get("/summary")
def summary(ctx: Context, principal: CurrentPrincipal) -> dict[str, dict[str, int]]:
    """Workers per queue and state: ``{queue: {state: n}}``."""
    with ctx.sessions() as session:
        return worker_counts(session)
