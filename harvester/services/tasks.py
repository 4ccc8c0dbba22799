"""Task submission and management: validate, store, kill, retry, list."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, aliased

from db.models import File, FileKind, Job, Role, Task
from db.queue import record_creation, transition
from db.states import TASK_TERMINAL
from harvester.architecture import parse_architecture
from harvester.context import HarvesterContext
from harvester.errors import Conflict, Forbidden, ImageError, InvalidRequest, NotFoundError
from harvester.identity import Principal
from harvester.images.reference import RegistryReference, is_registry_reference
from harvester.services.functions import check_function_parameters
from harvester.services.inputs import owner_holds, register_input
from harvester.services.lifecycle import (
    cancel_open_jobs,
    current_attempts,
    new_attempt,
    open_jobs,
    roll_up_at_commit,
)
from harvester.services.scan_submission import check_steering
from harvester.services.tokens import USER_NAME_PATTERN
from harvester.stores.files import check_file_name, check_sha256, decode_carried
from protocol.files import InputFile
from protocol.sandbox import MAX_SANDBOX_BYTES
from protocol.states import JobStatus, TaskStatus
from protocol.tasks import RetryChanges, TaskCreate

DATASET_SUFFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,200}$")

MAX_READERS = 100
"""How many users one task may be shared with."""


def validate_out_ds(out_ds: str, owner: str) -> str:
    """outDS must be ``user.<owner>.<name>`` (PanDA's rule for user datasets)."""
    prefix = f"user.{owner}."
    if (
        not out_ds.startswith(prefix)
        or not DATASET_SUFFIX.match(out_ds[len(prefix) :])
        or (".." in out_ds)
    ):
        raise InvalidRequest(
            f"invalid outDS {out_ds!r}: must be '{prefix}<name>' with letters, digits, "
            "'.', '_' or '-'"
        )
    return out_ds


def submit_task(
    session: Session,
    ctx: HarvesterContext,
    principal: Principal,
    params: TaskCreate,
    *,
    store_files: bool = True,
) -> Task:
    """Validate the parameters completely, then store the task ``registered``; without
    ``store_files`` (a dry run) the inputs it carries are checked, not stored."""
    principal.require(Role.USER)
    owner = principal.user
    validate_out_ds(params.outDS, owner)
    image = check_image(ctx, params.containerImage)
    if params.transform == "runcontainer" and not params.exec.strip():
        raise InvalidRequest("exec is empty: give the command to run with --exec")
    n_jobs = len(params.jobParameters) if params.jobParameters is not None else params.nJobs
    limit = ctx.settings.max_jobs_per_task
    steering = None
    if params.steering is not None:
        steering, n_jobs = check_steering(params, limit)
    elif params.transform == "hpo_eval":
        raise InvalidRequest("an hpo_eval task is a scan: submit it with phpo (steering)")
    if n_jobs < 1:
        raise InvalidRequest("a task needs at least one job")
    if n_jobs > limit:
        raise InvalidRequest(f"nJobs={n_jobs} is over the limit of {limit} jobs per task")
    sites = parse_sites(params.site, ctx)
    site = ",".join(sites) or None
    for name in params.excludedSite:
        if name not in ctx.queues:
            raise InvalidRequest(f"unknown site {name!r} in excludedSite")
    check_nodes(ctx, params.nodes, sites, params.excludedSite)
    seen: set[str] = set()
    for name in params.outputs:
        check_file_name(name, what="output name")
        if name in seen:
            raise InvalidRequest(f"output {name!r} is listed twice")
        seen.add(name)
    carried: list[tuple[InputFile, bytes]] = []  # checked now, stored once all checks pass
    for item in [*params.inputs, *([params.sandbox] if params.sandbox else [])]:
        check_file_name(item.name, what="input name")
        check_sha256(item.sha256)
        if item.content_b64 is not None:
            carried.append((item, decode_carried(item.name, item.sha256, item.content_b64)))
        elif not (owner_holds(session, owner, item.sha256) and ctx.files.exists(item.sha256)):
            raise InvalidRequest(
                f"input {item.name!r}: you hold no file with sha256 {item.sha256} (upload it first)"
            )
    if (
        params.sandbox is not None
        and params.sandbox.content_b64 is None
        and ctx.files.size(params.sandbox.sha256) > MAX_SANDBOX_BYTES
    ):
        raise InvalidRequest(
            f"the sandbox is over {MAX_SANDBOX_BYTES // 1024 // 1024} MiB: ship less of the "
            "work directory (--excludeFile), or large files as inputs"
        )
    architecture = parse_architecture(params.architecture)
    if architecture.gpu is not None:
        vendors = {n.vendor for q in ctx.queues.values() for n in q.gpu_nodes} | {
            "nvidia" for q in ctx.queues.values() if q.gpus and not q.gpu_nodes
        }
        if architecture.gpu.vendor not in vendors:
            raise InvalidRequest(
                f"no queue has a {architecture.gpu.vendor} GPU (GPU vendors here: "
                f"{', '.join(sorted(vendors)) or 'none'})"
            )
    if params.transform == "pyhf_fit":
        check_fit_parameters(params, steered=steering is not None)
    if params.transform == "pyfunc":
        check_function_parameters(ctx, params, image)

    if store_files:  # carried inputs: stored and registered as the owner's, as uploads are
        for item, data in carried:
            ctx.files.put_verified(data, item.sha256)
            register_input(session, owner, item.name, item.sha256, len(data))

    # what is kept: the parameters as sent, with the task's size, its normalised
    # steering and its site (AUTO: none) as checked above; under the wire names
    stored = params.model_copy(update={"nJobs": n_jobs, "steering": steering, "site": site})
    task = Task(
        name=params.taskName or params.outDS,
        owner=owner,
        status=TaskStatus.REGISTERED,
        kind=params.transform,
        params=stored.model_dump(by_alias=True),
        image=image,
        architecture=params.architecture,
        gpu_request=architecture.gpu.to_document() if architecture.gpu is not None else None,
        site=site,
        excluded_sites=list(params.excludedSite),
        cores=params.cores,
        nodes=params.nodes,
        memory_mb=params.memory_mb or 0,  # 0: what the queue's slot has
        walltime_s=params.walltime_s or 0,  # 0: up to the queue's maximum
        out_ds=params.outDS,
        n_jobs=n_jobs,
        priority=params.priority,
        max_attempt=params.maxAttempt,
    )
    session.add(task)
    session.flush()
    record_creation(session, task, reason="submitted", actor=owner)
    return task


def check_nodes(
    ctx: HarvesterContext, nodes: int, sites: Sequence[str], excluded: Sequence[str]
) -> None:
    """A job of ``nodes`` nodes needs a queue whose allocations are that large, among the
    queues the task may use; refused here, naming the largest, rather than left waiting."""
    if nodes == 1:
        return
    allowed = [
        q for q in ctx.queues.values() if (not sites or q.name in sites) and q.name not in excluded
    ]
    largest = max(allowed, key=lambda q: q.max_nodes, default=None)
    if largest is None or largest.max_nodes < nodes:
        offer = (
            f"the largest allocation a queue offers is {largest.max_nodes} "
            f"node{'s' if largest.max_nodes > 1 else ''} ({largest.name})"
            if largest is not None
            else "no queue is allowed"
        )
        raise InvalidRequest(f"nNodes={nodes}: {offer}")


def check_image(ctx: HarvesterContext, name: str) -> str:
    """What the task row keeps as its image: a cache image's name, or the normalised
    registry reference (pulled when the jobs need it, by the image puller)."""
    try:
        if is_registry_reference(name):
            reference = RegistryReference.parse(name)
            allowed = ctx.settings.allowed_registries
            if allowed and reference.registry not in allowed:
                raise ImageError(
                    f"image {name!r}: this site pulls images only from {', '.join(allowed)}"
                )
            return str(reference)
        return ctx.images.require(name).name
    except ImageError as exc:
        raise InvalidRequest(str(exc)) from exc


FIT_BACKENDS = ("numpy", "jax")
FIT_TEST_STATISTICS = ("qtilde", "q")
FITTERS = ("scipy", "batched")


def check_fit_parameters(params: TaskCreate, *, steered: bool = False) -> None:
    """A fit task names its patches per job (unless steered), a known backend and statistic."""
    args = params.transformArgs
    if args.get("backend", "numpy") not in FIT_BACKENDS:
        raise InvalidRequest(f"transformArgs.backend must be one of {', '.join(FIT_BACKENDS)}")
    if args.get("test_stat", "qtilde") not in FIT_TEST_STATISTICS:
        raise InvalidRequest(
            f"transformArgs.test_stat must be one of {', '.join(FIT_TEST_STATISTICS)}"
        )
    fitter = args.get("fitter", "scipy")
    if fitter not in FITTERS:
        raise InvalidRequest(f"transformArgs.fitter must be one of {', '.join(FITTERS)}")
    if fitter == "batched" and args.get("backend", "numpy") != "jax":
        raise InvalidRequest("transformArgs.fitter=batched fits inside JAX: it needs backend jax")
    if "results.json" not in params.outputs:
        raise InvalidRequest("a pyhf_fit task must declare the output results.json")
    if steered:
        return
    if not params.jobParameters:
        raise InvalidRequest("a pyhf_fit task needs jobParameters: one {'patches': [...]} per job")
    for index, job in enumerate(params.jobParameters):
        patches = job.get("patches")
        if (
            not isinstance(patches, list)
            or not patches
            or not all(isinstance(p, str) for p in patches)
        ):
            raise InvalidRequest(f"jobParameters[{index}].patches must be a list of patch names")


def parse_sites(value: str | None, ctx: HarvesterContext) -> tuple[str, ...]:
    """``site`` as panda-client sends it: one queue, a comma list (``--site A,B``: any of
    them), or ``AUTO``/nothing (empty: brokerage chooses). Every name must be a queue."""
    if value is None or value.strip().upper() in ("", "AUTO"):
        return ()
    names = [name.strip() for name in value.split(",")]
    if any(not name for name in names):
        raise InvalidRequest(f"site {value!r} has an empty name: give queues as A,B")
    for name in names:
        if name not in ctx.queues:
            raise InvalidRequest(
                f"unknown site {name!r}; known queues: {', '.join(sorted(ctx.queues)) or 'none'}"
            )
    return tuple(dict.fromkeys(names))


def get_task(session: Session, task_id: int) -> Task:
    task = session.get(Task, task_id)
    if task is None:
        raise NotFoundError(f"task {task_id} not found")
    return task


def check_owner(principal: Principal, task: Task, *, action: str) -> None:
    """Only the owner (or an admin) may change a task or say who may read it."""
    if principal.role is Role.PILOT:
        raise Forbidden(f"a pilot token cannot {action}")
    if task.owner != principal.user and not principal.is_admin:
        raise Forbidden(f"task {task.id} belongs to {task.owner}; you cannot {action}")


def may_read(principal: Principal, task: Task) -> bool:
    """The owner, an admin, or a user the owner shared the task with."""
    if principal.role is Role.PILOT:
        return False
    return principal.is_admin or principal.user in (task.owner, *task.readers)


def check_reader(principal: Principal, task: Task, *, action: str) -> None:
    """Logs, outputs and results are the owner's, and those the owner shared them with."""
    if principal.role is Role.PILOT:
        raise Forbidden(f"a pilot token cannot {action}")
    if not may_read(principal, task):
        raise Forbidden(
            f"task {task.id} belongs to {task.owner} and is not shared with you; "
            f"you cannot {action} (its owner can run: pbook share {task.id} {principal.user})"
        )


def share_task(
    session: Session, principal: Principal, task_id: int, add: list[str], remove: list[str]
) -> Task:
    """Let more users read the task, or fewer; the owner and admins only."""
    task = get_task(session, task_id)
    check_owner(principal, task, action="share it")
    for user in (*add, *remove):
        if not re.match(USER_NAME_PATTERN, user):
            raise InvalidRequest(
                f"invalid user name {user!r}: lowercase letters, digits, '_' or '-', "
                "starting with a letter"
            )
    readers = (set(task.readers) | set(add)) - set(remove) - {task.owner}
    if len(readers) > MAX_READERS:
        raise InvalidRequest(f"a task can be shared with at most {MAX_READERS} users")
    task.readers = sorted(readers)
    return task


def kill_task(session: Session, principal: Principal, task_id: int) -> Task:
    """Abort a task: its pending jobs are cancelled, running ones told to stop."""
    task = get_task(session, task_id)
    check_owner(principal, task, action="kill it")
    if task.status in TASK_TERMINAL:
        raise Conflict(f"task {task_id} already ended {task.status.value}; nothing to kill")
    cancel_open_jobs(
        session, task_id, reason=f"task killed by {principal.user}", actor=principal.user
    )
    session.flush()  # job rows before the task row, as every writer locks them
    transition(
        session,
        task,
        TaskStatus.ABORTED,
        reason=f"killed by {principal.user}",
        actor=principal.user,
    )
    roll_up_at_commit(session, task)  # cancels a retry committed meanwhile by a pilot
    return task


def kill_job(session: Session, principal: Principal, task_id: int, job_index: int) -> Job:
    """Cancel one job of a task (``hpcaf`` futures cancelled): its open attempt is cancelled,
    and a pilot running it is told to kill it at its next heartbeat."""
    task = get_task(session, task_id)
    check_owner(principal, task, action="kill its jobs")
    job = next((j for j in open_jobs(session, task_id) if j.job_index == job_index), None)
    if job is None:
        if not 0 <= job_index < task.n_jobs:
            raise NotFoundError(f"task {task_id} has no job {job_index}")
        raise Conflict(f"job {job_index} of task {task_id} already ended; nothing to kill")
    transition(
        session,
        job,
        JobStatus.CANCELLED,
        reason=f"killed by {principal.user}",
        actor=principal.user,
    )
    roll_up_at_commit(session, task)
    return job


def retry_task(
    session: Session,
    ctx: HarvesterContext,
    principal: Principal,
    task_id: int,
    changes: RetryChanges | None = None,
) -> tuple[Task, int]:
    """New attempts for every job whose last attempt failed or was cancelled; ``changes``
    (``pbook retry --memory/--maxWalltime/--site``) apply to them and to the task's later
    attempts. The parameters as submitted stay as they were; the history says what changed."""
    task = get_task(session, task_id)
    check_owner(principal, task, action="retry it")
    if task.status not in (TaskStatus.FINISHED, TaskStatus.FAILED, TaskStatus.ABORTED):
        raise Conflict(
            f"task {task_id} is {task.status.value}; only finished, failed or aborted tasks "
            "can be retried"
        )
    changed = _apply_retry_changes(task, ctx, changes) if changes is not None else []
    retried = 0
    extra_budget = task.parameters.maxAttempt
    for job in current_attempts(session, task_id):
        if job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            retry = new_attempt(session, job, reason=f"task retried by {principal.user}")
            retry.memory_mb, retry.walltime_s = task.memory_mb, task.walltime_s
            retried += 1
    if retried == 0:
        raise Conflict(f"task {task_id} has no failed or cancelled jobs to retry")
    task.max_attempt += extra_budget
    reason = f"retried {retried} jobs" + (f" with {', '.join(changed)}" if changed else "")
    transition(session, task, TaskStatus.READY, reason=reason, actor=principal.user)
    return task, retried


def _apply_retry_changes(task: Task, ctx: HarvesterContext, changes: RetryChanges) -> list[str]:
    """Set the task's requirements from ``changes``; what changed, for the history."""
    changed = []
    if changes.memory_mb is not None:
        task.memory_mb = changes.memory_mb
        changed.append(f"ramCount={changes.memory_mb} MiB per job")
    if changes.walltime_s is not None:
        task.walltime_s = changes.walltime_s
        changed.append(f"maxWalltime={changes.walltime_s} s")
    if changes.site is not None:
        sites = parse_sites(changes.site, ctx)
        excluded = sorted(set(sites) & set(task.excluded_sites))
        if excluded:
            raise InvalidRequest(f"site {', '.join(excluded)} is in the task's excludedSite")
        check_nodes(ctx, task.nodes, sites, task.excluded_sites)
        task.site = ",".join(sites) or None
        changed.append(f"site={task.site or 'AUTO'}")
    return changed


def list_tasks(
    session: Session,
    principal: Principal,
    *,
    owner: str | None,
    status: TaskStatus | None,
    limit: int,
    offset: int,
) -> tuple[int, list[Task]]:
    """Tasks newest first; users see their own unless they name another owner."""
    if principal.role is Role.PILOT:
        raise Forbidden("a pilot token cannot list tasks")
    query = select(Task)
    if owner is None and not principal.is_admin:
        owner = principal.user
    if owner is not None:
        query = query.where(Task.owner == owner)
    if status is not None:
        query = query.where(Task.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Task.id.desc()).limit(limit).offset(offset)).all()
    return total, list(rows)


def job_counts(session: Session, task_ids: list[int]) -> dict[int, dict[str, int]]:
    """Counts of the newest attempts by status, per task.

    Read off the (task_id, status) index: every row but the superseded attempts. A
    superseded attempt is ``closed`` (automatic retry) or, after ``pbook retry``,
    ``failed``/``cancelled`` with a newer attempt beside it; those few are subtracted.
    """
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    if not task_ids:
        return counts
    rows = session.execute(
        select(Job.task_id, Job.status, func.count())
        .where(Job.task_id.in_(task_ids), Job.status != JobStatus.CLOSED)
        .group_by(Job.task_id, Job.status)
    ).all()
    for task_id, status, n in rows:
        counts[task_id][JobStatus(status).value] = n
    newer = aliased(Job)
    superseded = session.execute(
        select(Job.task_id, Job.status, func.count())
        .where(
            Job.task_id.in_(task_ids),
            Job.status.in_([JobStatus.FAILED, JobStatus.CANCELLED]),
            exists().where(
                newer.task_id == Job.task_id,
                newer.job_index == Job.job_index,
                newer.attempt_nr > Job.attempt_nr,
            ),
        )
        .group_by(Job.task_id, Job.status)
    ).all()
    for task_id, status, n in superseded:
        key = JobStatus(status).value
        counts[task_id][key] -= n
        if not counts[task_id][key]:
            del counts[task_id][key]
    return counts


def task_files(session: Session, task_id: int, kind: FileKind | None = None) -> list[File]:
    query = select(File).where(File.task_id == task_id)
    if kind is not None:
        query = query.where(File.kind == kind)
    return list(session.scalars(query.order_by(File.job_id, File.name)).all())
