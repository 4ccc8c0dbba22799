"""Steered tasks at run time: scans whose next points depend on the results of the last ones.

Two kinds share the machinery: hyperparameter scans (``phpo``; each point a
``hpo_eval`` job whose ``metrics.json`` says how good it was) and adaptive fit
scans (``pfit --adaptive``; each point one patch, its metric CLs_obs). The
whole steering state is in the database: the task's ``steering`` parameters
(checked at submission by :mod:`harvester.services.scan_submission`), its
:class:`ScanPoint` rows and their jobs. A point and its job are created in
one transaction, and the proposers are pure functions of that record, so a
restarted (or a second) harvester continues the scan exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Job, ScanPoint, Task, utcnow
from db.queue import record_creation, transition
from db.states import JOB_TERMINAL, TASK_TERMINAL
from harvester.context import HarvesterContext
from harvester.json_documents import load_object
from harvester.scans.adaptive import AdaptivePlan, next_patches
from harvester.scans.proposers import Evaluation, make_proposer
from harvester.scans.space import parse_search_space
from harvester.services.lifecycle import (
    build_job,
    cancel_open_jobs,
    current_attempts,
    roll_up_at_commit,
)
from harvester.services.results import FIT_RESULTS_FILE
from harvester.services.scan_submission import ADAPTIVE, HPO, METRICS_FILE
from protocol.files import OutputFile
from protocol.states import JobStatus, TaskStatus


class EvaluationError(Exception):
    """A finished evaluation whose result cannot be read; the message says what is wrong."""


# -- steering ------------------------------------------------------------------------------


@dataclass
class ScanState:
    """A steered task as the database records it."""

    points: list[ScanPoint]
    jobs: dict[int, Job]

    def status(self, point: ScanPoint) -> JobStatus:
        return self.jobs[point.point_index].status

    def pending(self) -> list[ScanPoint]:
        return [p for p in self.points if self.status(p) not in JOB_TERMINAL]

    def evaluated(self) -> list[ScanPoint]:
        return [p for p in self.points if self.status(p) is JobStatus.FINISHED]

    def failed(self) -> list[ScanPoint]:
        return [p for p in self.points if self.status(p) in (JobStatus.FAILED, JobStatus.CANCELLED)]


def steering_of(task: Task) -> dict[str, Any]:
    """A steered task's normalised steering (see :mod:`harvester.services.scan_submission`)."""
    steering = task.parameters.steering
    if not steering:
        raise ValueError(f"task {task.id} is not a scan: it has no steering")
    return steering


def load_state(session: Session, task: Task) -> ScanState:
    points = list(
        session.scalars(
            select(ScanPoint).where(ScanPoint.task_id == task.id).order_by(ScanPoint.point_index)
        )
    )
    jobs = {j.job_index: j for j in current_attempts(session, task.id)}
    return ScanState(points=points, jobs=jobs)


def steer(session: Session, task: Task) -> int:
    """Create the next points of ``task`` where there is room; how many were created."""
    steering = steering_of(task)
    state = load_state(session, task)
    room = min(
        int(steering["nParallelEvaluation"]) - len(state.pending()),
        task.n_jobs - len(state.points),
    )
    if steering["kind"] == ADAPTIVE:
        return _steer_adaptive(session, task, state, room)
    if room <= 0:
        return 0
    space = parse_search_space(steering["searchSpace"])
    proposer = make_proposer(
        steering["algorithm"],
        space,
        seed=int(steering["seed"]),
        minimize=bool(steering["minimize"]),
        n_startup=int(steering.get("nStartup", 10)),
    )
    evaluated = [Evaluation(p.params, p.metric) for p in state.evaluated()]
    evaluated += [Evaluation(p.params, None) for p in state.failed()]
    pending = [p.params for p in state.pending()]
    created = 0
    for _ in range(room):
        index = len(state.points) + created
        params = proposer.propose(index, evaluated, pending)
        _add_point(session, task, index, params, {"point": params})
        pending.append(params)
        created += 1
    return created


def break_task(session: Session, task: Task, reason: str) -> None:
    """A scan that cannot be steered any further: its pending points are cancelled."""
    if task.status in TASK_TERMINAL:
        return
    cancel_open_jobs(session, task.id, reason=reason)
    session.flush()  # job rows before the task row, as every writer locks them
    task.error_dialog = reason[:2000]
    transition(session, task, TaskStatus.BROKEN, reason=reason[:500])
    roll_up_at_commit(session, task)  # cancels a retry committed meanwhile by a pilot


def _steer_adaptive(session: Session, task: Task, state: ScanState, room: int) -> int:
    steering = steering_of(task)
    plan = AdaptivePlan(
        initial=int(steering["initial"]),
        neighbours=int(steering["neighbours"]),
        target=float(steering["target"]),
    )
    fitted = {p.params["patch"]: p.metric for p in state.evaluated() if p.metric is not None}
    chosen = next_patches(
        steering["points"],
        fitted,
        failed={p.params["patch"] for p in state.failed()},
        pending={p.params["patch"] for p in state.pending()},
        plan=plan,
        room=max(room, 0),
    )
    if chosen is None:
        if task.n_jobs != len(state.points):
            task.n_jobs = len(state.points)  # converged: the scan is this many fits
            roll_up_at_commit(session, task)
        return 0
    for offset, patch in enumerate(chosen):
        _add_point(
            session, task, len(state.points) + offset, {"patch": patch}, {"patches": [patch]}
        )
    return len(chosen)


def _add_point(
    session: Session, task: Task, index: int, params: dict[str, Any], job_parameters: dict[str, Any]
) -> None:
    session.add(ScanPoint(task_id=task.id, point_index=index, params=params))
    job = build_job(task, index, job_parameters)
    session.add(job)
    session.flush()  # a second steerer creating the same point fails here, on the unique key
    record_creation(session, job, reason=f"scan point {index} proposed")


# -- results -------------------------------------------------------------------------------


def read_evaluation(
    ctx: HarvesterContext, task: Task, job: Job, outputs: list[OutputFile]
) -> tuple[float, dict[str, Any]]:
    """The metric (and everything reported with it) of a finished evaluation."""
    steering = steering_of(task)
    wanted = METRICS_FILE if steering["kind"] == HPO else FIT_RESULTS_FILE
    item = next((o for o in outputs if o.name == wanted), None)
    if item is None or not ctx.files.exists(item.sha256):
        raise EvaluationError(f"the evaluation reported no {wanted}")
    try:
        document = load_object(ctx.files.path(item.sha256), wanted)
    except OSError as exc:
        raise EvaluationError(f"{wanted} cannot be read: {exc}") from exc
    except ValueError as exc:
        raise EvaluationError(str(exc)) from exc
    if steering["kind"] == HPO:
        key = steering["metric"]
        results = document
    else:
        patch = (job.spec.get("parameters") or {}).get("patches", [None])[0]
        entry = document.get(patch)
        results = entry if isinstance(entry, dict) else {}
        key = "CLs_obs"
    value = results.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise EvaluationError(f"{wanted} has no finite number under {key!r} (got {value!r})")
    return float(value), results


def record_evaluation(
    session: Session, task: Task, job: Job, value: float, results: dict[str, Any]
) -> None:
    point = session.scalar(
        select(ScanPoint).where(
            ScanPoint.task_id == task.id, ScanPoint.point_index == job.job_index
        )
    )
    if point is None:
        return
    point.metric = value
    point.results = results
    point.job_id = job.id
    point.evaluated_at = utcnow()


# -- views ---------------------------------------------------------------------------------


def scan_summary(session: Session, task: Task) -> dict[str, Any]:
    """The points with their state and metric, and the best so far (for pbook and the API)."""
    steering = task.parameters.steering or {}
    state = load_state(session, task)
    minimize = bool(steering.get("minimize", True)) if steering.get("kind") == HPO else None
    rows: list[dict[str, Any]] = []
    for point in state.points:
        job = state.jobs[point.point_index]
        rows.append(
            {
                "index": point.point_index,
                "params": point.params,
                "status": job.status.value,
                "metric": point.metric,
                "results": point.results,
                "job_id": job.id,
                "attempt_nr": job.attempt_nr,
                "error": job.pilot_error_diag if job.status is JobStatus.FAILED else None,
            }
        )
    scored = [r for r in rows if r["metric"] is not None]
    best = None
    if scored and minimize is not None:
        best = (min if minimize else max)(scored, key=lambda r: float(r["metric"]))
    return {
        "jediTaskID": task.id,
        "status": task.status.value,
        "kind": steering.get("kind"),
        "algorithm": steering.get(
            "algorithm", ADAPTIVE if steering.get("kind") == ADAPTIVE else None
        ),
        "metric": steering.get("metric", "CLs_obs"),
        "searchSpace": steering.get("searchSpace"),
        "minimize": minimize,
        "maxPoints": task.n_jobs,
        "nParallelEvaluation": steering.get("nParallelEvaluation"),
        "best": best,
        "points": rows,
    }
