"""The dispatcher: what pilots call to acquire jobs, heartbeat and report.

A pilot may only move a job forward, only while it holds it, and a repeated
final report changes nothing: a job is never finished twice, and outputs are
registered only for the attempt that finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import File, FileKind, Job, Role, Task, Worker, utcnow
from db.queue import ROW_LOCK, claim_jobs, claimable_exists, transition
from db.states import JOB_ACTIVE, JOB_TERMINAL
from harvester.context import HarvesterContext
from harvester.errors import Conflict, Forbidden, InvalidRequest, NotFoundError
from harvester.identity import Principal
from harvester.images.cache import ImageInfo
from harvester.services import scan_steering
from harvester.services.lifecycle import fail_job, roll_up_at_commit
from harvester.services.scan_submission import HPO, METRICS_FILE
from harvester.stores.caches import PollKey
from harvester.stores.files import check_file_name
from protocol.error_codes import PilotErrorCode
from protocol.files import OutputFile
from protocol.pilot import (
    AcquireRequest,
    ContainerSpec,
    HeartbeatRequest,
    JobSpec,
    UpdateJobReply,
    UpdateJobRequest,
    WorkerReport,
)
from protocol.states import JobStatus, TaskStatus, WorkerStatus
from protocol.tasks import TaskParameters


def _require_pilot(principal: Principal) -> None:
    if principal.role is not Role.PILOT and not principal.is_admin:
        raise Forbidden("only pilot tokens may call the pilot endpoints")


def poll_key(req: AcquireRequest) -> PollKey:
    return (req.queue, req.cores, req.memory_mb, req.gpus, req.nodes)


def _check_poll(ctx: HarvesterContext, principal: Principal, req: AcquireRequest) -> None:
    """A poll needs a pilot token and a queue this harvester serves."""
    _require_pilot(principal)
    if req.queue not in ctx.queues:
        raise NotFoundError(f"unknown queue {req.queue!r}")


def known_idle(ctx: HarvesterContext, principal: Principal, req: AcquireRequest) -> bool:
    """Whether this process found nothing for such a poll a moment ago (no database)."""
    _check_poll(ctx, principal, req)
    return ctx.idle_queues.is_idle(poll_key(req), req.worker_id)


def remember_poll(ctx: HarvesterContext, req: AcquireRequest, *, found: bool) -> None:
    """Note what a poll that went to the database found, for :func:`known_idle`."""
    if found:
        ctx.idle_queues.found_work(poll_key(req))
    else:
        ctx.idle_queues.found_nothing(poll_key(req), req.worker_id)


def worth_claiming(
    session: Session, ctx: HarvesterContext, principal: Principal, req: AcquireRequest
) -> bool:
    """Whether :func:`acquire_jobs` could do anything for this poll, read without locks.

    Most polls of a large pilot fleet find nothing to do; answering them from a
    read keeps them from queueing for the write lock behind the claims and
    reports that do work. A job activated just after this read is taken by
    the pilot's next poll, as it would be had the poll come a moment earlier.
    """
    _check_poll(ctx, principal, req)
    worker = _pilot_worker(session, req.worker_id, req.queue, req.nodes)
    if worker is not None and worker.status is WorkerStatus.SUBMITTED:
        return True  # the poll itself moves the worker to running
    return claimable_exists(
        session,
        queue=req.queue,
        max_cores=req.cores,
        max_memory_mb=req.memory_mb,
        max_gpus=req.gpus,
        memory_per_core=ctx.queues[req.queue].memory_per_core,
        nodes=req.nodes,
    )


def acquire_jobs(
    session: Session, ctx: HarvesterContext, principal: Principal, req: AcquireRequest
) -> list[JobSpec]:
    """Claim up to ``n_jobs`` activated jobs of the pilot's queue."""
    _check_poll(ctx, principal, req)
    worker = _pilot_worker(session, req.worker_id, req.queue, req.nodes)
    if worker is not None:
        if worker.status is WorkerStatus.SUBMITTED:
            worker.started_at = utcnow()
            transition(session, worker, WorkerStatus.RUNNING, reason="pilot asked for jobs")
        worker.node = req.node or worker.node
    jobs = claim_jobs(
        session,
        queue=req.queue,
        limit=req.n_jobs,
        pilot_id=req.pilot_id,
        worker_id=req.worker_id,
        node=req.node,
        max_cores=req.cores,
        max_memory_mb=req.memory_mb,
        max_gpus=req.gpus,
        memory_per_core=ctx.queues[req.queue].memory_per_core,
        nodes=req.nodes,
    )
    if not jobs:
        return []
    tasks = {
        t.id: t for t in session.scalars(select(Task).where(Task.id.in_({j.task_id for j in jobs})))
    }
    for task in tasks.values():
        if task.status is TaskStatus.READY:  # a claim can only start a task, never end one
            roll_up_at_commit(session, task)
    images = {t.id: task_image(ctx, t) for t in tasks.values()}
    return [_job_spec(ctx, job, tasks[job.task_id], images[job.task_id]) for job in jobs]


def task_image(ctx: HarvesterContext, task: Task) -> ImageInfo | None:
    """The cache image a task's jobs run: by name, or the pulled digest it is pinned to."""
    if task.image_digest is not None:
        return ctx.images.get_pulled(task.image_digest)
    return ctx.images.get(task.image)


def pinned_image(task: Task) -> str:
    """The task's image as its jobs run it: a registry reference with its pinned digest."""
    if task.image_digest is None or task.image.endswith(task.image_digest):
        return task.image
    return f"{task.image}@{task.image_digest}"


def _pilot_worker(
    session: Session, worker_id: int | None, queue: str, nodes: int | None = None
) -> Worker | None:
    """The pilot's worker (``None`` for a pilot started by hand); with ``nodes``, one of
    that allocation size: a pilot takes no job its allocation cannot hold."""
    if worker_id is None:
        return None
    worker = session.get(Worker, worker_id)
    if worker is None or worker.queue != queue:
        raise InvalidRequest(f"worker {worker_id} is not a worker of queue {queue!r}")
    if nodes is not None and worker.nodes != nodes:
        raise InvalidRequest(
            f"worker {worker_id} is an allocation of {worker.nodes} node(s), not {nodes}"
        )
    return worker


def _job_spec(ctx: HarvesterContext, job: Job, task: Task, image: ImageInfo | None) -> JobSpec:
    parameters = task.parameters
    queue = ctx.queues[job.queue] if job.queue else None
    env = {
        "PANDAID": str(job.id),
        "JEDITASKID": str(task.id),
        "HPCAF_JOB_INDEX": str(job.job_index),
        "HPCAF_ATTEMPT_NR": str(job.attempt_nr),
        **parameters.env,
    }
    return JobSpec(
        job_id=job.id,
        task_id=task.id,
        job_index=job.job_index,
        attempt_nr=job.attempt_nr,
        owner=task.owner,
        out_ds=task.out_ds,
        # pinned: what the job runs, whatever the tag points to by now (the pilot's warm
        # workers are keyed by the image's path, which is the digest's)
        image=pinned_image(task),
        image_path=str(image.rootfs) if image else None,
        image_environment=image.environment if image else {},
        transform=parameters.transform,
        exec=parameters.exec,
        transform_args=_transform_args(parameters),
        job_parameters=job.spec.get("parameters"),
        env=env,
        outputs=list(parameters.outputs),
        inputs=list(parameters.inputs),
        sandbox=parameters.sandbox,
        cores=job.cores,
        nodes=job.nodes,
        # unspecified: the job's cores' share of the slot, as the claim booked it
        memory_mb=job.memory_mb or (queue.memory_per_core * job.cores if queue else 2000),
        walltime_s=job.walltime_s or (queue.walltime_s if queue else 3600),
        gpus=job.gpus,
        container=ContainerSpec(
            runtime=queue.container_runtime if queue else "auto",
            allow_network=queue.allow_network if queue else False,
            binds=list(queue.binds) if queue else [],
            options=list(queue.container_options) if queue else [],
        ),
        heartbeat_interval_s=ctx.settings.heartbeat_interval_s,
    )


def _transform_args(parameters: TaskParameters) -> dict[str, Any]:
    """The task's transformArgs; a scan's evaluations also learn which metric counts."""
    args = dict(parameters.transformArgs)
    scan = parameters.steering or {}
    if scan.get("kind") == HPO:
        args.setdefault("metric", scan["metric"])
        args.setdefault("metricsFile", METRICS_FILE)
    return args


def heartbeat(
    session: Session, principal: Principal, req: HeartbeatRequest
) -> dict[int, Literal["tobekilled"]]:
    """Refresh the heartbeat of held jobs; jobs no longer held are to be killed."""
    _require_pilot(principal)
    if not req.job_ids:
        return {}
    now = utcnow()
    session.execute(
        update(Job)
        .where(
            Job.id.in_(req.job_ids),
            Job.pilot_id == req.pilot_id,
            Job.status.in_(list(JOB_ACTIVE)),
        )
        .values(heartbeat_at=now)
        .execution_options(synchronize_session=False)
    )
    held = set(
        session.scalars(
            select(Job.id).where(
                Job.id.in_(req.job_ids),
                Job.pilot_id == req.pilot_id,
                Job.status.in_(list(JOB_ACTIVE)),
            )
        )
    )
    return {job_id: "tobekilled" for job_id in req.job_ids if job_id not in held}


def update_job(
    session: Session,
    ctx: HarvesterContext,
    principal: Principal,
    req: UpdateJobRequest,
) -> UpdateJobReply:
    """Apply a pilot's report: forward moves only, idempotent final states."""
    _require_pilot(principal)
    job_id = req.job_id
    # Locked and read fresh: the watchdog or a kill may be ending this job right now,
    # and whichever commits second must see what the first did, not overwrite it.
    job = session.get(Job, job_id, with_for_update=ROW_LOCK, populate_existing=True)
    if job is None:
        raise NotFoundError(f"job {job_id} not found")
    if job.pilot_id != req.pilot_id:
        raise Conflict(f"job {job_id} is not held by pilot {req.pilot_id}")
    task = session.get(Task, job.task_id)
    assert task is not None
    wanted = JobStatus(req.state)
    if job.status in JOB_TERMINAL:
        if job.status is wanted or (wanted is JobStatus.FAILED and job.status is JobStatus.CLOSED):
            return UpdateJobReply(job_id=job.id, status=job.status, changed=False)
        if job.status is JobStatus.CANCELLED:
            return UpdateJobReply(
                job_id=job.id, status=job.status, changed=False, command="tobekilled"
            )
        raise Conflict(f"job {job_id} already ended {job.status.value}; cannot report {req.state}")
    now = utcnow()
    job.heartbeat_at = now
    if req.metrics is not None:
        job.metrics = req.metrics
    if wanted in (JobStatus.STARTING, JobStatus.RUNNING):
        if job.status is wanted:
            return UpdateJobReply(job_id=job.id, status=job.status, changed=False)
        if wanted is JobStatus.RUNNING:
            job.started_at = job.started_at or now
        transition(session, job, wanted, reason="reported by pilot", actor=req.pilot_id)
        if task.status is TaskStatus.READY:
            roll_up_at_commit(session, task)
        return UpdateJobReply(job_id=job.id, status=job.status, changed=True)

    for carried in [*req.outputs, *([req.log] if req.log is not None else [])]:
        keep_carried_content(ctx, carried)
    if job.status in (JobStatus.SENT, JobStatus.STARTING) and req.started_at is not None:
        _record_running(session, job, req, now)
    if req.log is not None:
        _register(session, ctx, task, job, req.log, FileKind.LOG, log=True)
    evaluation_error = None
    if wanted is JobStatus.FINISHED and task.parameters.steering:
        try:
            value, results = scan_steering.read_evaluation(ctx, task, job, list(req.outputs))
            scan_steering.record_evaluation(session, task, job, value, results)
        except scan_steering.EvaluationError as exc:
            evaluation_error = str(exc)
    if wanted is JobStatus.FINISHED and evaluation_error is None:
        registered = _register_outputs(session, ctx, task, job, req.outputs)
        job.exit_code = req.exit_code if req.exit_code is not None else 0
        transition(
            session,
            job,
            JobStatus.FINISHED,
            reason=f"finished with {registered} outputs",
            actor=req.pilot_id,
        )
        roll_up_at_commit(session, task)
    else:
        code = req.pilot_error_code or PilotErrorCode.PAYLOAD_FAILED.value
        diagnostics = req.pilot_error_diag or "no diagnostics from the pilot"
        if evaluation_error is not None:  # it ran, but its result cannot be read: no retry
            code, diagnostics = PilotErrorCode.PAYLOAD_BAD_INPUT.value, evaluation_error
        retry = fail_job(
            session,
            job,
            task,
            error_code=code,
            diagnostics=diagnostics,
            exit_code=req.exit_code,
            actor=req.pilot_id,
        )
        if retry is None:  # the last attempt: keep what the payload did write
            declared = set(task.parameters.outputs)
            for output in req.outputs:
                if output.name in declared:
                    _register(session, ctx, task, job, output, FileKind.OUTPUT)
    return UpdateJobReply(job_id=job.id, status=job.status, changed=True)


def _register_outputs(
    session: Session, ctx: HarvesterContext, task: Task, job: Job, outputs: Sequence[OutputFile]
) -> int:
    declared = set(task.parameters.outputs)
    reported = {o.name for o in outputs}
    missing = declared - reported
    if missing:
        raise InvalidRequest(
            f"job {job.id} reported finished without its outputs: {', '.join(sorted(missing))}"
        )
    for output in outputs:
        if output.name not in declared:
            raise InvalidRequest(f"job {job.id}: output {output.name!r} was not declared")
        _register(session, ctx, task, job, output, FileKind.OUTPUT)
    return len(outputs)


def _record_running(session: Session, job: Job, req: UpdateJobRequest, now: datetime) -> None:
    """The ``running`` state of a job whose end came before its running report was due,
    from the start the pilot gives (kept between the job's creation and now: a pilot's
    clock is not the server's)."""
    assert req.started_at is not None
    started = min(max(req.started_at, job.created_at), now)
    job.started_at = started
    transition(
        session,
        job,
        JobStatus.RUNNING,
        reason=f"reported by pilot with its end (started {started.isoformat()})",
        actor=req.pilot_id,
    )


def keep_carried_content(ctx: HarvesterContext, item: OutputFile) -> None:
    """Store the content a report carries for a small file (``content_b64``), checked
    against its declared size and sha256; then it is registered as an uploaded one."""
    if item.content_b64 is not None:
        ctx.files.put_carried(item.name, item.sha256, item.content_b64, item.size)


def output_lfn(task: Task, job: Job, name: str) -> str:
    """PanDA-style logical file name: ``<outDS>.<taskID>._<serial>.<name>``."""
    return f"{task.out_ds}.{task.id}._{job.job_index + 1:06d}.{name}"


def log_lfn(task: Task, job: Job) -> str:
    """The log of one attempt: ``<outDS>.<taskID>._<serial>.attempt<N>.log.txt``."""
    return f"{task.out_ds}.{task.id}._{job.job_index + 1:06d}.attempt{job.attempt_nr}.log.txt"


def _register(
    session: Session,
    ctx: HarvesterContext,
    task: Task,
    job: Job,
    item: OutputFile,
    kind: FileKind,
    *,
    log: bool = False,
) -> None:
    """Register a blob that the pilot uploaded (or carried in its report), after checking
    it is there and whole."""
    check_file_name(item.name, what="output name")
    if not ctx.files.exists(item.sha256):
        raise InvalidRequest(f"{item.name}: no uploaded file with sha256 {item.sha256}")
    size = ctx.files.size(item.sha256)
    if size != item.size:
        raise InvalidRequest(f"{item.name}: reported size {item.size}, stored size {size}")
    if log:
        name = log_lfn(task, job)
        dataset = f"{task.out_ds}.log"
    else:
        name = output_lfn(task, job, item.name)
        dataset = task.out_ds
    existing = session.scalar(select(File).where(File.dataset == dataset, File.name == name))
    if existing is not None:
        if existing.sha256 == item.sha256:
            return
        raise Conflict(f"{name} is already registered in {dataset} with other content")
    session.add(
        File(
            sha256=item.sha256,
            size=size,
            name=name,
            dataset=dataset,
            owner=task.owner,
            kind=kind,
            task_id=task.id,
            job_id=job.id,
        )
    )
    try:
        session.flush()
    except IntegrityError as exc:
        raise Conflict(f"{name} is already registered in {dataset}") from exc


def worker_report(session: Session, principal: Principal, req: WorkerReport) -> None:
    """Record the node a worker runs on (GPU details are kept by the GPU brokerage)."""
    _require_pilot(principal)
    if req.worker_id is None:
        return
    worker = session.get(Worker, req.worker_id)
    if worker is None:
        raise NotFoundError(f"worker {req.worker_id} not found")
    worker.node = req.node
