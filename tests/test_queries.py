"""The monitor's REST queries on seeded data: filters, sorting, paging, summaries, bad input.

The harvester runs with ``--only api`` so that no agent moves the seeded rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from db.models import Job, Task, Worker
from protocol.states import JobStatus, TaskStatus, WorkerStatus
from tests.helpers import Harvester, harvester_settings, make_harvester

pytestmark = pytest.mark.e2e

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def seed(h: Harvester) -> dict[str, Any]:
    """Alice: 3 tasks (one with an HTML name), Bob: 1; 40 jobs over two queues; workers."""
    engine = create_engine(h.database_url)
    ids: dict[str, Any] = {}
    with Session(engine) as s:
        tasks = []
        for i, (owner, name, status, kind) in enumerate(
            [
                ("alice", "staus fit", TaskStatus.RUNNING, "pyhf_fit"),
                ("alice", "scan_lr 100%", TaskStatus.DONE, "hpo_eval"),
                ("alice", "<b>bold</b>", TaskStatus.FAILED, "runcontainer"),
                ("bob", "bob's hello", TaskStatus.DONE, "runcontainer"),
            ]
        ):
            task = Task(
                name=name,
                owner=owner,
                status=status,
                kind=kind,
                params={},
                image="base",
                out_ds=f"user.{owner}.t{i}",
                n_jobs=10,
                created_at=T0 + timedelta(hours=i),
            )
            s.add(task)
            tasks.append(task)
        s.flush()
        ids["tasks"] = [t.id for t in tasks]
        statuses = [JobStatus.FINISHED] * 6 + [JobStatus.FAILED] * 2 + [JobStatus.RUNNING] * 2
        for t_index, task in enumerate(tasks):
            for j in range(10):
                status = statuses[j]
                failed = status is JobStatus.FAILED
                s.add(
                    Job(
                        task_id=task.id,
                        job_index=j,
                        status=status,
                        queue="ANALY_LOCAL" if j % 2 == 0 else "ANALY_MANUAL",
                        spec={},
                        pilot_error_code=(1305 if j == 6 else 1213) if failed else None,
                        pilot_error_diag=f"diag {task.id}.{j}" if failed else None,
                        created_at=T0 + timedelta(hours=t_index, minutes=j),
                        ended_at=T0 + timedelta(hours=t_index, minutes=j + 1)
                        if status is not JobStatus.RUNNING
                        else None,
                    )
                )
        for k in range(5):
            s.add(
                Worker(
                    queue="ANALY_LOCAL",
                    provider="local",
                    batch_id=f"b{k}",
                    status=WorkerStatus.RUNNING if k < 2 else WorkerStatus.FINISHED,
                    node="node-a" if k % 2 else "node-b",
                )
            )
        s.commit()
    engine.dispose()
    return ids


@pytest.fixture(scope="module")
def seeded(
    tmp_path_factory: pytest.TempPathFactory,
    image_cache: Path,
    module_database_env: dict[str, str],
) -> Iterator[tuple[Harvester, dict[str, Any]]]:
    """One seeded harvester for the module: these tests only read."""
    h = make_harvester(
        tmp_path_factory.mktemp("queries"),
        image_cache,
        harvester_settings(),
        module_database_env,
        serve_args=("--only", "api"),
    )
    try:
        yield h, seed(h)
    finally:
        h.cleanup()


def get(h: Harvester, path: str, user: str = "alice", **params: Any) -> Any:
    with h.api(user) as c:
        reply = c.get(path, params=params)
        assert reply.status_code == 200, reply.text
        return reply.json()


@pytest.mark.database
def test_task_filters_sorting_and_paging(seeded: tuple[Harvester, dict[str, Any]]) -> None:
    h, ids = seeded
    mine = get(h, "/api/v1/tasks")
    assert mine["total"] == 3 and {t["owner"] for t in mine["items"]} == {"alice"}
    everyone = get(h, "/api/v1/tasks", owner="*", sort="created_at")
    assert [t["id"] for t in everyone["items"]] == ids["tasks"]
    assert get(h, "/api/v1/tasks", owner="bob")["items"][0]["name"] == "bob's hello"
    done = get(h, "/api/v1/tasks", owner="*", status=["done", "failed"])
    assert done["total"] == 3
    assert get(h, "/api/v1/tasks", kind="hpo_eval")["items"][0]["name"] == "scan_lr 100%"
    # patterns: * and ?, with % and _ taken literally
    assert get(h, "/api/v1/tasks", name="*fit")["total"] == 1
    assert get(h, "/api/v1/tasks", name="scan_lr 100%")["total"] == 1
    assert get(h, "/api/v1/tasks", name="scan?lr*")["total"] == 1
    assert get(h, "/api/v1/tasks", name="scan%")["total"] == 0
    window = get(
        h,
        "/api/v1/tasks",
        owner="*",
        created_after=(T0 + timedelta(minutes=30)).isoformat(),
        created_before=(T0 + timedelta(hours=2, minutes=30)).isoformat(),
    )
    assert [t["id"] for t in window["items"]] == [ids["tasks"][2], ids["tasks"][1]]
    page1 = get(h, "/api/v1/tasks", owner="*", sort="name", limit=2)
    page2 = get(h, "/api/v1/tasks", owner="*", sort="name", limit=2, offset=2)
    assert page1["total"] == page2["total"] == 4
    names = [t["name"] for t in page1["items"] + page2["items"]]
    assert names == sorted(names)
    shown = get(h, f"/api/v1/tasks/{ids['tasks'][0]}")
    assert shown["job_counts"] == {"finished": 6, "failed": 2, "running": 2}
    assert shown["progress"] == 0.8


@pytest.mark.database
def test_job_filters_summaries_and_errors(seeded: tuple[Harvester, dict[str, Any]]) -> None:
    h, ids = seeded
    first = ids["tasks"][0]
    jobs = get(h, "/api/v1/jobs", task=first, sort="id", limit=3)
    assert jobs["total"] == 10 and [j["job_index"] for j in jobs["items"]] == [0, 1, 2]
    assert get(h, "/api/v1/jobs", owner="bob")["total"] == 10
    failed = get(h, "/api/v1/jobs", status="failed", queue="ANALY_LOCAL")
    assert failed["total"] == 4 and all(j["job_index"] == 6 for j in failed["items"])
    assert get(h, "/api/v1/jobs", error_code=1213)["total"] == 4
    ended = get(
        h,
        "/api/v1/jobs",
        task=first,
        ended_after=(T0 + timedelta(minutes=3)).isoformat(),
        ended_before=(T0 + timedelta(minutes=6)).isoformat(),
    )
    assert sorted(j["job_index"] for j in ended["items"]) == [2, 3, 4]

    by_queue = get(h, "/api/v1/jobs/summary", group_by="queue")
    rows = {r["key"]: r for r in by_queue["rows"]}
    assert rows["ANALY_LOCAL"]["counts"] == {"finished": 12, "failed": 4, "running": 4}
    assert rows["ANALY_MANUAL"]["total"] == 20
    by_task = get(h, "/api/v1/jobs/summary", group_by="task", owner="alice")
    assert [r["key"] for r in by_task["rows"]] == sorted(ids["tasks"][:3], key=str)
    assert all(r["counts"]["failed"] == 2 for r in by_task["rows"])

    errors = get(h, "/api/v1/jobs/errors")
    assert [(e["code"], e["count"], e["tasks"]) for e in errors] == [(1213, 4, 4), (1305, 4, 4)]
    assert errors[0]["name"] == "walltime_exceeded"
    assert errors[0]["example_diag"].startswith("diag ")
    assert get(h, "/api/v1/jobs/errors", task=first)[0]["count"] == 1

    history_of_job = get(h, f"/api/v1/jobs/{jobs['items'][0]['id']}/history")
    assert history_of_job == [], "seeded rows have no history; the endpoint answers"


@pytest.mark.database
def test_workers_listing_and_summary(seeded: tuple[Harvester, dict[str, Any]]) -> None:
    h, _ = seeded
    workers = get(h, "/api/v1/workers", status="running")
    assert workers["total"] == 2
    assert get(h, "/api/v1/workers", node="node-?")["total"] == 5
    assert get(h, "/api/v1/workers", batch_id="b3")["items"][0]["node"] == "node-a"
    assert get(h, "/api/v1/workers/summary") == {"ANALY_LOCAL": {"running": 2, "finished": 3}}


@pytest.mark.parametrize(
    ("path", "params", "code", "message"),
    [
        ("/api/v1/tasks", {"stauts": "done"}, 400, "unknown query parameter stauts"),
        ("/api/v1/jobs", {"tsak": 1}, 400, "unknown query parameter tsak"),
        ("/api/v1/workers", {"foo": 1}, 400, "unknown query parameter foo"),
        ("/api/v1/tasks", {"sort": "password"}, 400, "cannot sort by 'password'"),
        ("/api/v1/jobs", {"sort": "-nope"}, 400, "cannot sort by 'nope'"),
        ("/api/v1/tasks", {"limit": 1001}, 422, "less than or equal to 1000"),
        ("/api/v1/jobs", {"limit": 0}, 422, "greater than or equal to 1"),
        ("/api/v1/tasks", {"offset": -1}, 422, "greater than or equal to 0"),
        ("/api/v1/tasks", {"status": "bogus"}, 422, "Input should be"),
        ("/api/v1/jobs", {"created_after": "yesterday"}, 422, "datetime"),
        ("/api/v1/jobs/summary", {"group_by": "owner"}, 422, "Input should be"),
        ("/api/v1/tasks", {"name": "x" * 300}, 400, "at most 256"),
    ],
)
def test_bad_queries_are_4xx_with_a_message(
    seeded: tuple[Harvester, dict[str, Any]],
    path: str,
    params: dict[str, Any],
    code: int,
    message: str,
) -> None:
    h, _ = seeded
    with h.api("alice") as c:
        reply = c.get(path, params=params)
    assert reply.status_code == code, reply.text
    assert message in reply.text


def test_pilot_tokens_cannot_list_tasks_or_jobs(seeded: tuple[Harvester, dict[str, Any]]) -> None:
    h, _ = seeded
    with h.api("pilot") as c:
        assert c.get("/api/v1/tasks").status_code == 403
        assert c.get("/api/v1/jobs").status_code == 403
        assert c.get("/api/v1/jobs/summary").status_code == 403
    with h.api("nobody") as c:
        assert c.get("/api/v1/jobs").status_code == 401
