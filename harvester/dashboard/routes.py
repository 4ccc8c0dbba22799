"""The web dashboard: server-rendered pages over the same services as the REST API.

Pages: the task list (filters, live refresh), a task (state bar, jobs, results
with the exclusion plot for fits, the best points for scans, kill and retry
for its owner), a job (history, worker and batch id, GPU, log tail), and the
queues with their workers. Jinja2 escapes everything it renders; the only
JavaScript is ``static/live.js``, which re-fetches the live part of a page.
Nothing is loaded from outside the harvester, so it works on a closed network.
"""

from __future__ import annotations

import json
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import select

from db.models import EntityKind, File, FileKind, Job, Role, Task, Worker
from db.queue import state_history
from db.states import TASK_TERMINAL
from harvester.context import HarvesterContext
from harvester.dashboard.session import COOKIE, csrf_token, csrf_valid, load_secret
from harvester.errors import HarvesterError, NotFoundError, Unauthorized
from harvester.identity import Principal
from harvester.request_params import JobIdPath, Offset, TaskIdPath, reject_nul_characters
from harvester.services import queues as queue_service
from harvester.services import results as results_service
from harvester.services import scan_steering
from harvester.services import tasks as task_service
from harvester.services.lifecycle import current_attempts
from harvester.services.listing import TASK_SORTS, TaskFilter, page, task_query
from harvester.services.summaries import progress
from harvester.services.tokens import authenticate
from protocol.states import JobStatus, TaskStatus, WorkerStatus

router = APIRouter(include_in_schema=False)
STATIC = Path(__file__).parent / "static"
STATE_ORDER = [s.value for s in JobStatus]
LOG_TAIL_LINES = 200
PAGE_SIZE = 50

_env = Environment(
    loader=PackageLoader("harvester.dashboard", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


class LoginRequired(Exception):
    """No (valid) token cookie: the page redirects to the login form."""


def _ctx(request: Request) -> HarvesterContext:
    ctx: HarvesterContext = request.app.state.context
    return ctx


def _secret(request: Request) -> bytes:
    state = request.app.state
    if getattr(state, "dashboard_secret", None) is None:
        state.dashboard_secret = load_secret(_ctx(request).settings.home)
    secret: bytes = state.dashboard_secret
    return secret


def _viewer(request: Request) -> Principal:
    token = request.cookies.get(COOKIE)
    try:
        with _ctx(request).sessions() as session:
            principal = authenticate(session, token)
    except Unauthorized as exc:
        raise LoginRequired from exc
    if principal.role is Role.PILOT:
        raise LoginRequired
    return principal


def render(request: Request, template: str, status_code: int = 200, **values: Any) -> HTMLResponse:
    token = request.cookies.get(COOKIE)
    values.setdefault("viewer", None)
    values["csrf"] = csrf_token(_secret(request), token) if token else ""
    values["path"] = request.url.path
    html = _env.get_template(template).render(**values)
    return HTMLResponse(html, status_code=status_code)


def _bar(counts: dict[str, int], total: int) -> list[dict[str, Any]]:
    """Segments of the state bar: each state's share of the task's jobs."""
    total = max(total, sum(counts.values()), 1)
    return [
        {"state": s, "n": counts[s], "pct": round(100 * counts[s] / total, 2)}
        for s in STATE_ORDER
        if counts.get(s)
    ]


def _progress(counts: dict[str, int], n_jobs: int) -> int:
    return round(100 * progress(counts, n_jobs))


# -- login ---------------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    """Only paths of this dashboard (no open redirect to another site)."""
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return "/"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    return render(request, "login.html", error=None, next=_safe_next(next))


@router.post("/login")
def login(
    request: Request,
    token: Annotated[str, Form(max_length=512)],
    next: Annotated[str, Form(max_length=512)] = "/",
) -> Response:
    token = token.strip()
    try:
        with _ctx(request).sessions() as session:
            principal = authenticate(session, token)
    except Unauthorized:
        return render(request, "login.html", 401, error="invalid or revoked token", next=next)
    if principal.role is Role.PILOT:
        return render(
            request, "login.html", 403, error="a pilot token cannot use the dashboard", next=next
        )
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
    return response


@router.post("/logout")
def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    if not csrf_valid(_secret(request), request.cookies.get(COOKIE), csrf):
        return render(request, "error.html", 403, message="the form expired; reload the page")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


# -- tasks ---------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def task_list(
    request: Request,
    owner: str | None = None,
    status: Annotated[list[str] | None, Query()] = None,
    name: str | None = None,
    kind: str | None = None,
    sort: str = "-id",
    offset: Offset = 0,
    fragment: bool = False,
) -> HTMLResponse:
    viewer = _viewer(request)
    owner = owner.strip() if owner else None
    if owner is None and not viewer.is_admin:
        owner = viewer.user
    if owner == "*":
        owner = None
    statuses = [TaskStatus(s) for s in status or [] if s in TaskStatus._value2member_map_]
    f = TaskFilter(owner=owner, status=statuses, name=name or None, kind=kind or None)
    with _ctx(request).sessions() as session:
        total, tasks = page(
            session, task_query(f), sort=sort, sorts=TASK_SORTS, limit=PAGE_SIZE, offset=offset
        )
        counts = task_service.job_counts(session, [t.id for t in tasks])
    rows = [
        {
            "task": t,
            "counts": counts.get(t.id, {}),
            "bar": _bar(counts.get(t.id, {}), t.n_jobs),
            "progress": _progress(counts.get(t.id, {}), t.n_jobs),
        }
        for t in tasks
    ]
    query = {"owner": owner or "*", "name": name or "", "kind": kind or "", "sort": sort}
    values: dict[str, Any] = {
        "viewer": viewer,
        "rows": rows,
        "total": total,
        "offset": offset,
        "page_size": PAGE_SIZE,
        "filters": {
            "owner": owner or "*",
            "status": [s.value for s in statuses],
            "name": name,
            "kind": kind,
            "sort": sort,
        },
        "states": [s.value for s in TaskStatus],
        "next_query": urlencode({**query, "offset": offset + PAGE_SIZE}),
        "prev_query": urlencode({**query, "offset": max(0, offset - PAGE_SIZE)}),
    }
    return render(request, "_tasks_live.html" if fragment else "tasks.html", **values)


def _task_values(request: Request, viewer: Principal, task_id: int) -> dict[str, Any]:
    ctx = _ctx(request)
    with ctx.sessions() as session:
        task = task_service.get_task(session, task_id)
        counts = task_service.job_counts(session, [task_id]).get(task_id, {})
        jobs = current_attempts(session, task_id)
        retried = {j.job_index for j in jobs if j.attempt_nr > 1}
        owner = task.owner == viewer.user or viewer.is_admin
        values: dict[str, Any] = {
            "viewer": viewer,
            "task": task,
            "counts": counts,
            "bar": _bar(counts, task.n_jobs),
            "progress": _progress(counts, task.n_jobs),
            "jobs": jobs[:500],
            "more_jobs": max(0, len(jobs) - 500),
            "retried": retried,
            "is_owner": owner,
            "can_kill": owner and task.status not in TASK_TERMINAL,
            "can_retry": owner
            and task.status in (TaskStatus.FINISHED, TaskStatus.FAILED, TaskStatus.ABORTED),
            "fit": None,
            "scan": None,
        }
        if owner and task.kind == "pyhf_fit":
            fit = results_service.task_results(session, ctx, task).get("results") or {}
            values["fit"] = fit
            values["fitted"] = sum(1 for e in fit.values() if e.get("status") == "ok")
        if owner and task.parameters.steering:
            scan = scan_steering.scan_summary(session, task)
            scored = [p for p in scan["points"] if p["metric"] is not None]
            scored.sort(key=lambda p: p["metric"], reverse=scan.get("minimize") is False)
            values["scan"] = scan
            values["top_points"] = scored[:10] if scan.get("minimize") is not None else []
    return values


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
def task_page(request: Request, task_id: TaskIdPath, fragment: bool = False) -> HTMLResponse:
    viewer = _viewer(request)
    values = _task_values(request, viewer, task_id)
    return render(request, "_task_live.html" if fragment else "task.html", **values)


@router.post("/tasks/{task_id}/{action}")
def task_action(
    request: Request, task_id: TaskIdPath, action: str, csrf: Annotated[str, Form()] = ""
) -> Response:
    viewer = _viewer(request)
    if action not in ("kill", "retry"):
        raise NotFoundError(f"no action {action!r}")
    if not csrf_valid(_secret(request), request.cookies.get(COOKIE), csrf):
        return render(
            request,
            "error.html",
            403,
            viewer=viewer,
            message="the form expired or did not come from this dashboard; reload",
        )
    with _ctx(request).sessions.begin() as session:
        if action == "kill":
            task_service.kill_task(session, viewer, task_id)
        else:
            task_service.retry_task(session, _ctx(request), viewer, task_id)
    return RedirectResponse(f"/tasks/{task_id}", status_code=303)


@router.get("/tasks/{task_id}/plot.png")
def task_plot(request: Request, task_id: TaskIdPath) -> Response:
    """The exclusion plot of a fit task, or the metric plot of a scan (cached per state)."""
    viewer = _viewer(request)
    ctx = _ctx(request)
    with ctx.sessions() as session:
        task = task_service.get_task(session, task_id)
        task_service.check_reader(viewer, task, action="read its results")
        key = (task.id, task.modified_at.isoformat(), task.status.value)
        cached = _plots.get(key)
        if cached is not None:
            return Response(cached, media_type="image/png")
        if task.parameters.steering and task.kind == "hpo_eval":
            document: Any = scan_steering.scan_summary(session, task)
        else:
            document = results_service.task_results(session, ctx, task).get("results")
        title = f"task {task.id}: {task.name}"
        labels = task.parameters.transformArgs.get("labels") or ["m1", "m2"]
    png = _draw(task.kind, document, title, labels)
    _plots[key] = png
    while len(_plots) > 32:
        _plots.popitem(last=False)
    return Response(png, media_type="image/png")


_plots: OrderedDict[tuple[int, str, str], bytes] = OrderedDict()


def _draw(kind: str, document: Any, title: str, labels: list[str]) -> bytes:
    try:
        from harvester.plotting import plot_exclusion, plot_scan
    except ImportError as exc:  # matplotlib is in the 'fit' extra
        raise NotFoundError(f"plots need matplotlib on the harvester: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="hpcaf-plot-") as tmp:
        path = Path(tmp) / "plot.png"
        try:
            if kind == "hpo_eval":
                plot_scan(document, path)
            else:
                plot_exclusion(
                    document or {}, path, title=title, labels=(str(labels[0]), str(labels[1]))
                )
        except ValueError as exc:
            raise NotFoundError(f"no plot yet: {exc}") from exc
        return path.read_bytes()


# -- jobs ----------------------------------------------------------------------------------


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: JobIdPath) -> HTMLResponse:
    viewer = _viewer(request)
    ctx = _ctx(request)
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFoundError(f"job {job_id} not found")
        task = session.get(Task, job.task_id)
        assert task is not None
        worker = session.get(Worker, job.worker_id) if job.worker_id else None
        changes = state_history(session, EntityKind.JOB, job_id)
        attempts = list(
            session.scalars(
                select(Job)
                .where(Job.task_id == job.task_id, Job.job_index == job.job_index)
                .order_by(Job.attempt_nr)
            )
        )
        owner = task.owner == viewer.user or viewer.is_admin
        log_tail = None
        if owner:
            row = session.scalar(
                select(File).where(File.job_id == job_id, File.kind == FileKind.LOG)
            )
            if row is not None:
                lines = ctx.files.path(row.sha256).read_text(errors="replace").splitlines()
                log_tail = "\n".join(lines[-LOG_TAIL_LINES:])
    gpus = (job.metrics or {}).get("gpus") or []
    return render(
        request,
        "job.html",
        viewer=viewer,
        job=job,
        task=task,
        worker=worker,
        history=changes,
        attempts=attempts,
        is_owner=owner,
        log_tail=log_tail,
        gpus=gpus,
        parameters=json.dumps(job.spec.get("parameters"), indent=1)[:4000],
    )


# -- queues --------------------------------------------------------------------------------


@router.get("/queues", response_class=HTMLResponse)
def queues_page(request: Request) -> HTMLResponse:
    viewer = _viewer(request)
    with _ctx(request).sessions() as session:
        queues = queue_service.list_queues(session)
        workers = queue_service.worker_counts(session)
        activated = queue_service.activated_counts(session)
        recent = list(session.scalars(select(Worker).order_by(Worker.id.desc()).limit(50)))
    states = [s.value for s in WorkerStatus]
    return render(
        request,
        "queues.html",
        viewer=viewer,
        queues=queues,
        workers=workers,
        activated=activated,
        worker_states=states,
        recent=recent,
    )


@router.get("/static/{name}")
def static(name: str) -> Response:
    files = {"style.css": "text/css", "live.js": "text/javascript"}
    if name not in files:
        raise NotFoundError(f"no static file {name!r}")
    return Response(
        (STATIC / name).read_bytes(),
        media_type=files[name],
        headers={"Cache-Control": "max-age=300"},
    )


def install(app: Any) -> None:
    """Mount the dashboard on ``app``: its routes and its error pages."""
    app.include_router(router, dependencies=[Depends(reject_nul_characters)])

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, _exc: LoginRequired) -> Response:
        target = "/login"
        if request.method == "GET" and request.url.path != "/":
            target += "?" + urlencode({"next": request.url.path})
        return RedirectResponse(target, status_code=303)


def error_page(request: Request, exc: HarvesterError) -> HTMLResponse:
    """A dashboard page that failed: the same message as the API, as a page."""
    return render(request, "error.html", exc.status_code, message=str(exc))


def is_page(request: Request) -> bool:
    """Whether an error on this request should be a page (not a JSON API reply)."""
    path = request.url.path
    return not path.startswith(("/api/", "/metrics", "/docs", "/openapi", "/redoc"))
