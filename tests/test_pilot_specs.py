"""The pilot reads each job of an acquire reply once, into ``JobSpec``; a job it
cannot read is reported failed without running, and the pilot goes on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from pilot.job import JobRunner
from pilot.server import PilotServer, ServerError
from pilot.specs import UnreadableJob, read_job
from protocol.files import InputFile
from protocol.pilot import AcquireReply, ContainerSpec, JobSpec
from tests.helpers import Harvester


def server_spec(**changes: Any) -> dict[str, Any]:
    """A job as the harvester sends it: every field, through its JSON."""
    spec = JobSpec(
        job_id=7,
        task_id=3,
        job_index=0,
        attempt_nr=1,
        owner="alice",
        out_ds="user.alice.x",
        image="fit",
        image_path="/images/fit",
        transform="pyhf_fit",
        exec="",
        transform_args={"poi": "mu", "bounds": [0.0, 1.5]},
        job_parameters={"patches": ["a"]},
        env={"PANDAID": "7"},
        outputs=["results.json"],
        inputs=[InputFile(name="ws.json", sha256="0" * 64)],
        cores=2,
        memory_mb=2000,
        walltime_s=600,
        container=ContainerSpec(runtime="bwrap", binds=["/data"]),
        heartbeat_interval_s=30.0,
    )
    raw: dict[str, Any] = json.loads(AcquireReply(jobs=[spec]).model_dump_json())["jobs"][0]
    raw.update(changes)
    return raw


def test_a_spec_reads_back_to_the_json_the_server_sent() -> None:
    raw = server_spec()
    spec = read_job(raw)
    assert isinstance(spec, JobSpec)
    # job.json, which the transforms read, is what the server sent
    assert json.dumps(spec.model_dump(mode="json")) == json.dumps(raw)


def test_missing_optional_fields_take_the_pilots_old_defaults() -> None:
    raw = server_spec()
    for name in ("image_path", "env", "inputs", "outputs", "cores", "container"):
        del raw[name]
    del raw["heartbeat_interval_s"]
    spec = read_job(raw)
    assert isinstance(spec, JobSpec)
    assert spec.image_path is None and spec.env == {} and spec.inputs == []
    assert spec.outputs == [] and spec.cores == 1 and spec.heartbeat_interval_s == 30.0
    assert spec.container == ContainerSpec(
        runtime="auto", allow_network=False, binds=[], options=[]
    )


def test_an_unreadable_spec_names_its_job_and_what_is_wrong() -> None:
    raw = server_spec(cores="many")
    del raw["walltime_s"]
    bad = read_job(raw)
    assert isinstance(bad, UnreadableJob) and bad.job_id == 7
    assert "walltime_s: Field required" in bad.problem and "cores:" in bad.problem
    assert read_job([1, 2]) == UnreadableJob(
        None, "the spec: Input should be a valid dictionary or instance of JobSpec"
    )
    assert read_job({"job_id": True}).job_id is None  # type: ignore[union-attr]


class FakeServer:
    def __init__(self) -> None:
        self.updates: list[dict[str, Any]] = []

    def update_job(self, body: dict[str, Any]) -> dict[str, Any]:
        self.updates.append(body)
        return {"status": body["state"]}


def test_an_unreadable_job_is_reported_failed_and_not_run(tmp_path: Path) -> None:
    server = FakeServer()
    runner = JobRunner(server, "p1", tmp_path, 1, warm=False)  # type: ignore[arg-type]
    raw = server_spec()
    del raw["transform"]
    bad = read_job(raw)
    assert isinstance(bad, UnreadableJob)
    outcome = runner.refuse(bad)
    assert outcome is not None and outcome.state == "failed"
    assert server.updates == [
        {
            "job_id": 7,
            "pilot_id": "p1",
            "state": "failed",
            "exit_code": None,
            "outputs": [],
            "pilot_error_code": 1000,
            "pilot_error_diag": "the pilot cannot read the job's specification: "
            "transform: Field required",
        }
    ]
    assert runner.refuse(UnreadableJob(None, "no id")) is None and len(server.updates) == 1


def acquiring(reply: httpx.Response) -> PilotServer:
    server = PilotServer("http://harvester", "token")
    server._client = httpx.Client(transport=httpx.MockTransport(lambda _request: reply))
    return server


def test_acquire_reads_each_job_where_it_arrives() -> None:
    bad = server_spec(job_id=8)
    del bad["image"]
    jobs = acquiring(httpx.Response(200, json={"jobs": [server_spec(), bad]})).acquire_jobs({})
    assert isinstance(jobs[0], JobSpec) and jobs[0].job_id == 7
    assert isinstance(jobs[1], UnreadableJob) and jobs[1].job_id == 8


@pytest.mark.parametrize(
    "reply", [httpx.Response(200, text="<html>"), httpx.Response(200, json={})]
)
def test_a_reply_without_jobs_is_a_transient_server_error(reply: httpx.Response) -> None:
    with pytest.raises(ServerError) as raised:
        acquiring(reply).acquire_jobs({})
    assert raised.value.status_code is None  # the pilot asks again, as when unreachable


def test_the_harvester_takes_the_failure_of_an_unreadable_job(
    harvester: Harvester, tmp_path: Path
) -> None:
    """Reported straight from ``sent``, as no ``starting`` came; the pilot's words are kept."""
    task_id = harvester.submit(
        "--containerImage", "base", "--exec", "true", "--outDS", "user.alice.unreadable",
        "--site", "ANALY_MANUAL", "--maxAttempt", "1",
    )  # fmt: skip
    harvester.wait_activated(task_id, 1)
    server = PilotServer(harvester.url, harvester.tokens["pilot"])
    try:
        (job,) = server.acquire_jobs({"queue": "ANALY_MANUAL", "pilot_id": "p1"})
        assert isinstance(job, JobSpec)
        runner = JobRunner(server, "p1", tmp_path, 1, warm=False)
        runner.refuse(UnreadableJob(job.job_id, "transform: Field required"))
    finally:
        server.close()
    (failed,) = harvester.jobs(task_id)
    assert failed["status"] == "failed" and failed["pilot_error_code"] == 1000
    assert failed["pilot_error_diag"] == (
        "the pilot cannot read the job's specification: transform: Field required"
    )
