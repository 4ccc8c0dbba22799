"""The FastAPI application: routers, error replies, and the agents' life cycle."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

from db.errors import IllegalTransition
from harvester.api.auth import CurrentPrincipal
from harvester.api.body_limit import RequestBodyLimit
from harvester.api.metrics import Metrics
from harvester.api.query import reject_unknown_query_params
from harvester.api.routes import files, jobs, pilot, queues, tasks, workers
from harvester.context import HarvesterContext
from harvester.dashboard import routes as dashboard
from harvester.errors import DatabaseUnavailable, HarvesterError, InvalidRequest
from harvester.outage import is_conflict
from harvester.request_params import reject_nul_characters

log = logging.getLogger(__name__)


class Background(Protocol):
    """What runs beside the API and starts and stops with it: the agents'
    :class:`harvester.agents.base.AgentRunner`, which the assembly passes in.

    Named by what the API needs of it, so the API imports no agent.
    """

    def start(self) -> None: ...

    def stop(self) -> None: ...


def create_app(ctx: HarvesterContext, runner: Background | None = None) -> FastAPI:
    """The REST API over ``ctx``; ``runner`` (the agents) starts and stops with it."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if runner is not None:
            runner.start()
        try:
            yield
        finally:
            if runner is not None:
                runner.stop()

    app = FastAPI(
        title="hpcaf harvester",
        version="0.1.0",
        description="PanDA-style workload management: tasks, jobs, queues, workers, pilots.",
        lifespan=lifespan,
        # Metrics are Prometheus (/metrics). FastAPI's OpenTelemetry hooks, with no
        # provider configured, still look one up on every request: off.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.context = ctx
    app.add_middleware(
        RequestBodyLimit,
        max_bytes=ctx.settings.max_request_bytes,
        exempt_paths=("/api/v1/files",),  # streamed to disk under max_upload_bytes
    )
    app.state.metrics = Metrics(ctx)
    app.state.metrics.install(app)
    for router in (
        tasks.router,
        jobs.router,
        files.router,
        queues.router,
        workers.router,
        pilot.router,
    ):
        app.include_router(
            router,
            dependencies=[Depends(reject_unknown_query_params), Depends(reject_nul_characters)],
        )
    dashboard.install(app)

    @app.exception_handler(HarvesterError)
    async def _harvester_error(request: Request, exc: HarvesterError) -> Response:
        if dashboard.is_page(request):
            return dashboard.error_page(request, exc)
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own reply echoes each bad input back: a NaN in it cannot be
        # written as JSON (a 500), and a large body would be sent back whole.
        errors = [{"type": e["type"], "loc": e["loc"], "msg": e["msg"]} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(IllegalTransition)
    async def _illegal(_request: Request, exc: IllegalTransition) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(OperationalError)
    @app.exception_handler(SQLAlchemyTimeoutError)
    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        if is_conflict(exc):
            log.info("%s: rolled back, it conflicted with a concurrent transaction", where)
            message, retry_after = "a concurrent update conflicted; nothing was changed, retry", 1
        else:
            ctx.outage.failed(where, exc)
            message = "the database is unavailable; nothing was changed, retry in a few seconds"
            retry_after = 5
        unavailable = DatabaseUnavailable(message)
        return JSONResponse(
            {"detail": str(unavailable)},
            status_code=unavailable.status_code,
            headers={"Retry-After": str(retry_after)},
        )

    @app.exception_handler(DataError)
    async def _unstorable(request: Request, exc: DataError) -> Response:
        # SQLSTATE class 22: the value is at fault (out of range, too long, a NUL),
        # not the database; the transaction was rolled back, so nothing was stored.
        reason = str(getattr(exc, "orig", exc)).splitlines()[0]
        log.info(
            "%s %s: refused a value the database cannot store: %s",
            request.method,
            request.url.path,
            reason,
        )
        return await _harvester_error(
            request, InvalidRequest(f"a value cannot be stored: {reason}")
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; see the harvester log"}, status_code=500)

    @app.get("/api/v1/whoami", tags=["tokens"])
    def whoami(principal: CurrentPrincipal) -> dict[str, str]:
        """The user and role of the calling token."""
        return {"user": principal.user, "role": principal.role.value}

    return app
