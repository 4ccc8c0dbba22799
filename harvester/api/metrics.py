"""``/metrics`` in Prometheus text format.

Job and worker counts are read from the database at scrape time (a custom
collector, so several harvester processes on one database report the same
truth); request latencies and dispatch counters are process-local.

| metric | type | labels |
|---|---|---|
| ``hpcaf_jobs`` | gauge | ``status``, ``queue`` |
| ``hpcaf_workers`` | gauge | ``status``, ``queue`` |
| ``hpcaf_tasks`` | gauge | ``status`` |
| ``hpcaf_http_request_duration_seconds`` | histogram | ``method``, ``route`` |
| ``hpcaf_jobs_dispatched_total`` | counter | ``queue`` |
| ``hpcaf_job_updates_total`` | counter | ``state`` |
| ``hpcaf_idle_polls_total`` | counter | ``queue`` |
| ``hpcaf_heartbeats_total`` | counter | |
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from fastapi import FastAPI, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Receive, Scope, Send

from db.models import Job, Task, Worker
from harvester import telemetry
from harvester.api.auth import CurrentPrincipal
from harvester.context import HarvesterContext


class QueueStateCollector(Collector):
    """Counts of jobs, workers and tasks by state, straight from the database."""

    def __init__(self, ctx: HarvesterContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        jobs = GaugeMetricFamily(
            "hpcaf_jobs", "Job attempts by status and queue", labels=["status", "queue"]
        )
        workers = GaugeMetricFamily(
            "hpcaf_workers", "Workers by status and queue", labels=["status", "queue"]
        )
        tasks = GaugeMetricFamily("hpcaf_tasks", "Tasks by status", labels=["status"])
        with self.ctx.sessions() as session:
            for job_status, job_queue, n in session.execute(
                select(Job.status, Job.queue, func.count()).group_by(Job.status, Job.queue)
            ):
                jobs.add_metric([job_status.value, job_queue or ""], n)
            for worker_status, worker_queue, n in session.execute(
                select(Worker.status, Worker.queue, func.count()).group_by(
                    Worker.status, Worker.queue
                )
            ):
                workers.add_metric([worker_status.value, worker_queue], n)
            for task_status, n in session.execute(
                select(Task.status, func.count()).group_by(Task.status)
            ):
                tasks.add_metric([task_status.value], n)
        yield jobs
        yield workers
        yield tasks
        failures = CounterMetricFamily(
            "hpcaf_provider_call_failures",
            "Failed batch-system calls of this process's agents",
            labels=["provider", "queue", "call"],
        )
        for (provider, queue, call), n in sorted(telemetry.failures().items()):
            failures.add_metric([provider, queue, call], n)
        yield failures


class Metrics:
    """The process's registry and the instruments the API updates."""

    def __init__(self, ctx: HarvesterContext) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(QueueStateCollector(ctx))
        self.latency = Histogram(
            "hpcaf_http_request_duration_seconds",
            "API request latency",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.dispatched = Counter(
            "hpcaf_jobs_dispatched", "Jobs handed to pilots", ["queue"], registry=self.registry
        )
        self.updates = Counter(
            "hpcaf_job_updates",
            "Pilot job updates by reported state",
            ["state"],
            registry=self.registry,
        )
        self.idle_polls = Counter(
            "hpcaf_idle_polls",
            "Acquires answered 'nothing' from the process's memory of an empty queue",
            ["queue"],
            registry=self.registry,
        )
        self.heartbeats = Counter("hpcaf_heartbeats", "Pilot heartbeats", registry=self.registry)

    def install(self, app: FastAPI) -> None:
        app.add_middleware(_RequestTimer, latency=self.latency)

        @app.get("/metrics", include_in_schema=False)
        def metrics(_principal: CurrentPrincipal) -> Response:
            """Prometheus text format (any valid token; scrape with a bearer token)."""
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class _RequestTimer:
    """Observes each HTTP request's latency by route template.

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` runs every
    request through an extra task and stream, which costs an idle pilot's
    poll more than the poll itself.
    """

    def __init__(self, app: ASGIApp, latency: Histogram) -> None:
        self.app = app
        self.latency = latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.latency.labels(scope["method"], path).observe(time.perf_counter() - start)
