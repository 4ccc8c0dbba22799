"""/metrics parses as Prometheus text, needs a token, and its counts follow the jobs."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import Harvester

pytestmark = pytest.mark.e2e


def scrape(h: Harvester) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with h.api("alice") as c:
        response = c.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_follow_the_jobs(harvester: Harvester) -> None:
    assert httpx.get(harvester.url + "/metrics").status_code == 401
    task_id = harvester.submit(
        "--containerImage",
        "base",
        "--exec",
        "true",
        "--outDS",
        "user.alice.metrics",
        "--nJobs",
        "3",
        "--site",
        "ANALY_MANUAL",
    )
    harvester.wait_activated(task_id, 3)
    before = scrape(harvester)
    assert before[("hpcaf_jobs", (("queue", "ANALY_MANUAL"), ("status", "activated")))] == 3
    assert before[("hpcaf_tasks", (("status", "ready"),))] == 1
    harvester.start_pilot("ANALY_MANUAL")
    assert harvester.wait_task(task_id)["status"] == "done"
    after = scrape(harvester)
    assert after[("hpcaf_jobs", (("queue", "ANALY_MANUAL"), ("status", "finished")))] == 3
    assert ("hpcaf_jobs", (("queue", "ANALY_MANUAL"), ("status", "activated"))) not in after
    assert after[("hpcaf_jobs_dispatched_total", (("queue", "ANALY_MANUAL"),))] == 3
    assert after[("hpcaf_job_updates_total", (("state", "finished"),))] == 3
    assert after[("hpcaf_tasks", (("status", "done"),))] == 1
    latency = [k for k in after if k[0] == "hpcaf_http_request_duration_seconds_count"]
    assert any(dict(labels).get("route") == "/api/v1/pilot/acquire_jobs" for _, labels in latency)


def test_provider_call_failures_are_counted(session_factory: Any) -> None:
    """The agents' failed batch-system calls show as hpcaf_provider_call_failures_total."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from harvester import telemetry
    from harvester.api.metrics import QueueStateCollector

    registry = CollectorRegistry()
    registry.register(QueueStateCollector(SimpleNamespace(sessions=session_factory)))  # type: ignore[arg-type]

    def failures() -> dict[tuple[str, ...], float]:
        text = generate_latest(registry).decode()
        return {
            (s.labels["provider"], s.labels["queue"], s.labels["call"]): s.value
            for family in text_string_to_metric_families(text)
            if family.name == "hpcaf_provider_call_failures"
            for s in family.samples
            if s.name.endswith("_total")
        }

    before = failures().get(("slurm", "ANALY_TEST_Q", "submit"), 0)
    telemetry.record_failure("slurm", "ANALY_TEST_Q", "submit")
    telemetry.record_failure("slurm", "ANALY_TEST_Q", "submit")
    assert failures()[("slurm", "ANALY_TEST_Q", "submit")] == before + 2
