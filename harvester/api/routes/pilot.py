"""Pilot endpoints: acquire_jobs, heartbeat, update_job (one or in bulk), worker-node report."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from db.states import JOB_TERMINAL
from harvester.api.auth import Context, CurrentPrincipal
from harvester.context import HarvesterContext
from harvester.identity import Principal
from harvester.services import bulk, dispatch, pilot_calls
from harvester.stores.signals import NOTIFIED, PASSED_ON
from protocol.pilot import (
    AcquireReply,
    AcquireRequest,
    BulkUpdateItem,
    BulkUpdateRequest,
    HeartbeatReply,
    HeartbeatRequest,
    JobSpec,
    UpdateJobReply,
    UpdateJobRequest,
    WorkerReport,
)

router = APIRouter(prefix="/api/v1/pilot", tags=["pilot"])


@router.post("/acquire_jobs", response_model=AcquireReply)
async def acquire_jobs(
    req: AcquireRequest, request: Request, ctx: Context, principal: CurrentPrincipal
) -> AcquireReply:
    """Claim up to ``n_jobs`` activated jobs of a queue (atomic; each job to one pilot).

    With ``wait_s``, an empty answer is held until brokerage activates a job of the
    queue (or ``wait_s`` passes), so that an idle pilot takes new work at once instead
    of at its next poll; it looks again every ``LONG_POLL_RECHECK_S`` for jobs another
    harvester instance activated. Brokerage wakes one waiting pilot per job it
    activated, not every pilot of the queue.
    """
    deadline = time.monotonic() + req.wait_s
    woken: str | None = None
    while True:
        with ctx.activations.watch(req.queue) as activated:
            jobs = await _acquire_or_idle(request, ctx, principal, req)
            left = deadline - time.monotonic()
            leaving = bool(jobs) or left <= 0 or ctx.activations.closed
            # Hand the wake-up to one other pilot when this one cannot use it: brokerage
            # woke it for a job it cannot take (too big for what its slot has free, another
            # GPU), or it was picked while still looking and leaves now, perhaps before
            # the job it was woken for was there to see.
            if (not jobs and woken == NOTIFIED) or (leaving and activated.notified):
                ctx.activations.notify(req.queue, 1, reason=PASSED_ON, exclude=activated)
            if leaving:
                return AcquireReply(jobs=jobs)
            woken = await activated.wait(min(left, LONG_POLL_RECHECK_S))


LONG_POLL_RECHECK_S = 2.0


async def _acquire_or_idle(
    request: Request, ctx: HarvesterContext, principal: Principal, req: AcquireRequest
) -> list[JobSpec]:
    if dispatch.known_idle(ctx, principal, req):
        request.app.state.metrics.idle_polls.labels(req.queue).inc()
        return []  # answered from memory: no thread, no database
    jobs = await run_in_threadpool(pilot_calls.acquire, ctx, principal, req)
    if jobs:
        request.app.state.metrics.dispatched.labels(req.queue).inc(len(jobs))
    return jobs


@router.post("/heartbeat", response_model=HeartbeatReply)
def heartbeat(
    req: HeartbeatRequest, request: Request, ctx: Context, principal: CurrentPrincipal
) -> HeartbeatReply:
    """Keep held jobs alive; the reply names jobs the pilot must kill."""
    request.app.state.metrics.heartbeats.inc()
    return HeartbeatReply(commands=pilot_calls.heartbeat(ctx, principal, req))


@router.post("/update_job", response_model=UpdateJobReply)
def update_job(
    req: UpdateJobRequest, request: Request, ctx: Context, principal: CurrentPrincipal
) -> UpdateJobReply:
    """Report a job's new state (forward only; a repeated final report changes nothing)."""
    reply = pilot_calls.update_job(ctx, principal, req)
    request.app.state.metrics.updates.labels(req.state).inc()
    return reply


@router.post("/update_jobs", response_model=list[BulkUpdateItem])
def update_jobs(
    req: BulkUpdateRequest, request: Request, ctx: Context, principal: CurrentPrincipal
) -> list[BulkUpdateItem]:
    """Many reports in one transaction; the common ones applied set-based. Each item is
    answered (an item's error does not stop the others)."""
    with ctx.sessions.begin() as session:
        replies = bulk.update_jobs_bulk(session, ctx, principal, req.updates)
    for item in req.updates:
        request.app.state.metrics.updates.labels(item.state).inc()
    if any(r.status in JOB_TERMINAL for r in replies):
        ctx.endings.notify_all()
    return replies


@router.post("/worker_node", status_code=204)
def worker_node(req: WorkerReport, ctx: Context, principal: CurrentPrincipal) -> None:
    """What the pilot found on its node (cores, memory, GPUs)."""
    pilot_calls.worker_node(ctx, principal, req)
