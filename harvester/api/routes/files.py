"""File endpoints: upload (streamed, content-addressed) and download by sha256."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from db.models import File, Job, Role, Task
from harvester.api.auth import Context, CurrentPrincipal
from harvester.context import HarvesterContext
from harvester.errors import Forbidden, InvalidRequest, NotFoundError
from harvester.identity import Principal
from harvester.services.inputs import owner_holds, register_input
from harvester.services.tasks import may_read
from harvester.stores.files import check_file_name, check_sha256
from protocol.files import FilePublic

router = APIRouter(prefix="/api/v1/files", tags=["files"])


@router.post("", status_code=status.HTTP_201_CREATED)
async def upload(
    request: Request,
    ctx: Context,
    principal: CurrentPrincipal,
    name: Annotated[str, Query(max_length=255)],
    sha256: Annotated[str | None, Query()] = None,
) -> dict[str, object]:
    """Upload a file as the raw request body.

    Users upload inputs (registered as theirs); pilots upload job outputs and
    logs, which are registered only when the job's final update names them.
    The body is refused before it is stored when it is over the size limit.
    """
    check_file_name(name)
    if sha256 is not None:
        check_sha256(sha256)
    declared = request.headers.get("content-length")
    try:
        declared_size = int(declared) if declared is not None else None
    except ValueError as exc:
        raise InvalidRequest("invalid Content-Length header") from exc
    try:
        digest, size = await ctx.files.put_stream(
            request.stream(), expected_sha256=sha256, declared_size=declared_size
        )
    except ClientDisconnect as exc:  # the part received is already deleted
        raise InvalidRequest(
            "the upload was interrupted before its end; nothing was stored"
        ) from exc
    if principal.role is Role.PILOT:
        return {"name": name, "sha256": digest, "size": size}
    return await run_in_threadpool(_register_input, ctx, principal.user, name, digest, size)


def _register_input(
    ctx: HarvesterContext, owner: str, name: str, digest: str, size: int
) -> dict[str, object]:
    with ctx.sessions.begin() as session:
        row = register_input(session, owner, name, digest, size)
        return FilePublic.model_validate(row, from_attributes=True).model_dump(mode="json")


def _shared_with(session: Session, principal: Principal, row: File) -> bool:
    if row.job_id is None:
        return False
    job = session.get(Job, row.job_id)
    task = session.get(Task, job.task_id) if job is not None else None
    return task is not None and may_read(principal, task)


@router.head("/{sha256}")
def holds(sha256: str, ctx: Context, principal: CurrentPrincipal) -> Response:
    """200 when the harvester holds this content as one of the caller's files, else 404:
    a client uploads only what is missing. Another user's files answer 404 as well,
    so that nobody learns whether someone else holds a given content."""
    check_sha256(sha256)
    with ctx.sessions() as session:
        mine = owner_holds(session, principal.user, sha256)
    if not mine or not ctx.files.exists(sha256):
        raise NotFoundError(f"you hold no file with sha256 {sha256}")
    return Response(status_code=status.HTTP_200_OK)


@router.get("/{sha256}")
def download(sha256: str, ctx: Context, principal: CurrentPrincipal) -> FileResponse:
    """Download a file by checksum: pilots and admins any; users their own files, and the
    outputs and logs of tasks shared with them."""
    check_sha256(sha256)
    with ctx.sessions() as session:
        rows = session.scalars(select(File).where(File.sha256 == sha256)).all()
        if not rows and principal.role is not Role.PILOT:
            raise NotFoundError(f"no file with sha256 {sha256}")
        if principal.role is Role.USER and not any(
            row.owner == principal.user or _shared_with(session, principal, row) for row in rows
        ):
            raise Forbidden("this file belongs to another user, who has not shared its task")
        name = rows[0].name if rows else sha256
    path = ctx.files.path(sha256)
    if not path.is_file():
        raise NotFoundError(f"no file with sha256 {sha256}")
    return FileResponse(path, filename=name, media_type="application/octet-stream")
