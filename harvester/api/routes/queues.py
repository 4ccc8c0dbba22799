"""Queue endpoints: list, show, and status changes (admins only)."""

from __future__ import annotations

from fastapi import APIRouter

from db.models import QueueStatus, Role
from harvester.api.auth import Context, CurrentPrincipal
from harvester.errors import Forbidden
from harvester.services import queues as queue_service
from protocol.queues import QueuePublic, QueueStatusChange

router = APIRouter(prefix="/api/v1/queues", tags=["queues"])


@router.get("", response_model=list[QueuePublic])
def list_queues(ctx: Context, principal: CurrentPrincipal) -> list[QueuePublic]:
    """Every queue with its configuration, workers by state and activated jobs."""
    with ctx.sessions() as session:
        workers = queue_service.worker_counts(session)
        activated = queue_service.activated_counts(session)
        return [
            QueuePublic(
                name=q.name,
                provider=q.provider,
                status=q.status.value,
                config=q.config,
                workers=workers.get(q.name, {}),
                activated_jobs=activated.get(q.name, 0),
            )
            for q in queue_service.list_queues(session)
        ]


@router.patch("/{name}", response_model=QueuePublic)
def set_status(
    name: str, change: QueueStatusChange, ctx: Context, principal: CurrentPrincipal
) -> QueuePublic:
    """Set a queue online, offline or test (admins only)."""
    if principal.role is not Role.ADMIN:
        raise Forbidden("only admins change queues")
    with ctx.sessions.begin() as session:
        row = queue_service.set_queue_status(session, name, QueueStatus(change.status))
        return QueuePublic(
            name=row.name, provider=row.provider, status=row.status.value, config=row.config
        )
