"""A pilot's calls as whole units of work: the transaction, and what follows its commit.

The HTTP routes and the shared-filesystem relay both answer pilots through
these, so a call reached through a file obeys the same rules as one reached
through a socket: the same claims, the same forward-only reports, the same
wake-ups of clients following a task.
"""

from __future__ import annotations

from typing import Literal

from db.states import JOB_TERMINAL
from harvester.context import HarvesterContext
from harvester.identity import Principal
from harvester.services import dispatch
from harvester.services.tokens import authenticate
from protocol.pilot import (
    AcquireRequest,
    HeartbeatRequest,
    JobSpec,
    UpdateJobReply,
    UpdateJobRequest,
    WorkerReport,
)


def principal_of(ctx: HarvesterContext, token: str | None) -> Principal:
    """The caller of a token: from the process's token memory, else from the token table
    (then remembered for ``token_cache_s``); 401 if unknown or revoked."""
    known = ctx.tokens.get(token)
    if known is not None:
        return known
    with ctx.reads() as session:
        principal = authenticate(session, token)
    assert token is not None  # authenticate refuses a missing token
    ctx.tokens.remember(token, principal)
    return principal


def acquire(ctx: HarvesterContext, principal: Principal, req: AcquireRequest) -> list[JobSpec]:
    """Claim jobs for a pilot: looked for without locks first, claimed only when there is
    something to claim; an empty poll is remembered so that the next is answered from
    memory (:func:`dispatch.known_idle`)."""
    with ctx.reads() as session:
        if not dispatch.worth_claiming(session, ctx, principal, req):
            dispatch.remember_poll(ctx, req, found=False)
            return []
    with ctx.sessions.begin() as session:
        jobs = dispatch.acquire_jobs(session, ctx, principal, req)
    dispatch.remember_poll(ctx, req, found=bool(jobs))
    return jobs


def heartbeat(
    ctx: HarvesterContext, principal: Principal, req: HeartbeatRequest
) -> dict[int, Literal["tobekilled"]]:
    """Keep held jobs alive; the jobs the pilot must kill, with their command."""
    with ctx.sessions.begin() as session:
        return dispatch.heartbeat(session, principal, req)


def update_job(
    ctx: HarvesterContext, principal: Principal, req: UpdateJobRequest
) -> UpdateJobReply:
    """Report a job's new state; once a final state is committed, clients following the
    job's task look at once."""
    with ctx.sessions.begin() as session:
        reply = dispatch.update_job(session, ctx, principal, req)
    if reply.status in JOB_TERMINAL:
        ctx.endings.notify_all()
    return reply


def worker_node(ctx: HarvesterContext, principal: Principal, req: WorkerReport) -> None:
    """What the pilot found on its node (cores, memory, GPUs)."""
    with ctx.sessions.begin() as session:
        dispatch.worker_report(session, principal, req)
