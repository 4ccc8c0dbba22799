"""phpo end to end: real harvester, real pilots, evaluations in real bubblewrap containers.

The evaluations are a few lines of Python in the ``base`` image that write
``metrics.json`` from their arguments, so the tests check the scan machinery
(steering, parallelism, restart, failures) in seconds; the example training
of examples/hpo runs in its own image in the last test.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, CliResult, Harvester, ensure_image, harvester_settings, wait_for

pytestmark = pytest.mark.e2e

# loss = (x - 1)^2 + (y - 3)^2 from the command line; sleeps a little so evaluations overlap
EVALUATE = (
    "python3 -c 'import json, sys, time; x, y = map(float, sys.argv[1:3]); "
    "time.sleep(float(sys.argv[3])); "
    'json.dump({"loss": (x - 1) ** 2 + (y - 3) ** 2, "x": x}, open("metrics.json", "w"))\' '
    "%{x} %{y} {sleep}"
)


def phpo(h: Harvester, *args: str, user: str = "alice") -> CliResult:
    return h.cli("harvester.client.phpo", *args, user=user, timeout=300)


def submit_scan(h: Harvester, *args: str) -> int:
    result = phpo(h, "--containerImage", "base", *args)
    assert result.returncode == 0, result.output
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("jediTaskID=")]
    assert line, result.output
    return int(line[0].split("=", 1)[1])


def points(h: Harvester, task_id: int, user: str = "alice") -> dict[str, Any]:
    with h.api(user) as c:
        reply = c.get(f"/api/v1/tasks/{task_id}/points")
        assert reply.status_code == 200, reply.text
        summary: dict[str, Any] = reply.json()
        return summary


def max_running_at_once(h: Harvester, task_id: int) -> int:
    """The most evaluations of the task in 'running' at the same moment, from the history."""
    rows = h.query(
        "SELECT h.entity_id, h.to_status, h.at FROM state_history h JOIN jobs j "
        "ON h.entity = 'job' AND h.entity_id = j.id WHERE j.task_id = :t ORDER BY h.id",
        t=task_id,
    )
    running: set[int] = set()
    peak = 0
    for job_id, status, _at in rows:
        if status == "running":
            running.add(job_id)
        elif status in ("finished", "failed", "closed", "cancelled"):
            running.discard(job_id)
        peak = max(peak, len(running))
    return peak


def test_grid_scan_of_two_by_two(harvester: Harvester, tmp_path: Path) -> None:
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"x": [0, 1], "y": [1, 3]}))
    task_id = submit_scan(
        harvester,
        "--exec",
        EVALUATE.replace("{sleep}", "0"),
        "--searchSpace",
        str(space),
        "--algorithm",
        "grid",
        "--maxPoints",
        "10",
        "--nParallelEvaluation",
        "2",
        "--outDS",
        "user.alice.grid",
    )
    waited = harvester.pbook("wait", str(task_id), "--timeout", "180")
    assert waited.returncode == 0, waited.output
    summary = points(harvester, task_id)
    assert summary["maxPoints"] == 4, "a grid has 4 points even when 10 are allowed"
    assert [p["status"] for p in summary["points"]] == ["finished"] * 4
    assert sorted((p["params"]["x"], p["params"]["y"]) for p in summary["points"]) == [
        (0, 1),
        (0, 3),
        (1, 1),
        (1, 3),
    ]
    for p in summary["points"]:
        expected = (p["params"]["x"] - 1) ** 2 + (p["params"]["y"] - 3) ** 2
        assert p["metric"] == pytest.approx(expected)
        assert p["results"]["x"] == p["params"]["x"], "everything in metrics.json is kept"
    assert summary["best"]["params"] == {"x": 1, "y": 3} and summary["best"]["metric"] == 0

    shown = harvester.pbook("show", str(task_id))
    assert shown.returncode == 0, shown.output
    assert "4 of 4 points evaluated" in shown.stdout
    assert "best loss = 0 at point" in shown.stdout and "x=1, y=3" in shown.stdout
    as_json = harvester.pbook("results", str(task_id), "--json")
    assert json.loads(as_json.stdout)["best"]["params"] == {"x": 1, "y": 3}
    plot = tmp_path / "scan.png"
    drawn = harvester.pbook("results", str(task_id), "--plot", str(plot))
    assert drawn.returncode == 0, drawn.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "4 evaluated points" in drawn.stdout


@pytest.mark.database
def test_tpe_scan_keeps_at_most_k_evaluations_running(harvester_factory: Any) -> None:
    h = harvester_factory(harvester_settings(max_workers=3))
    task_id = submit_scan(
        h,
        "--exec",
        EVALUATE.replace("{sleep}", "1.5"),
        "--searchSpace",
        json.dumps(
            {
                "x": {"method": "uniform", "dimension": {"low": -2, "high": 4}},
                "y": {"method": "uniform", "dimension": {"low": 0, "high": 6}},
            }
        ),
        "--algorithm",
        "tpe",
        "--maxPoints",
        "7",
        "--nParallelEvaluation",
        "2",
        "--outDS",
        "user.alice.tpe",
    )
    peak_in_flight = 0
    deadline = time.monotonic() + 240
    while h.task(task_id)["status"] not in ("done", "finished", "failed"):
        in_flight = h.query(
            "SELECT count(*) FROM jobs WHERE task_id = :t AND status IN "
            "('defined','activated','sent','starting','running')",
            t=task_id,
        )[0][0]
        peak_in_flight = max(peak_in_flight, in_flight)
        assert time.monotonic() < deadline, "the scan did not end"
        time.sleep(0.2)
    assert h.task(task_id)["status"] == "done"
    summary = points(h, task_id)
    assert len(summary["points"]) == 7 and all(p["metric"] is not None for p in summary["points"])
    assert peak_in_flight <= 2, "never more than K points proposed and not yet done"
    assert max_running_at_once(h, task_id) == 2, "two evaluations did run side by side"
    best = min(p["metric"] for p in summary["points"])
    assert summary["best"]["metric"] == best


@pytest.mark.database
def test_scan_survives_a_harvester_restart(harvester: Harvester) -> None:
    """SIGKILL the service mid-scan: the restarted one resumes; no point lost or repeated."""
    task_id = submit_scan(
        harvester,
        "--exec",
        EVALUATE.replace("{sleep}", "1"),
        "--searchSpace",
        json.dumps(
            {"x": {"method": "uniform", "dimension": {"low": 0, "high": 2}}, "y": [1, 2, 3]}
        ),
        "--algorithm",
        "random",
        "--maxPoints",
        "8",
        "--nParallelEvaluation",
        "2",
        "--seed",
        "5",
        "--outDS",
        "user.alice.restart",
    )
    wait_for(
        lambda: sum(p["metric"] is not None for p in points(harvester, task_id)["points"]) >= 2,
        120,
        "two evaluated points",
    )
    harvester.stop(signal.SIGKILL)
    time.sleep(2)
    harvester.start()
    assert harvester.wait_task(task_id, 240)["status"] == "done"
    summary = points(harvester, task_id)
    assert [p["index"] for p in summary["points"]] == list(range(8))
    rows = harvester.query("SELECT point_index FROM scan_points WHERE task_id = :t", t=task_id)
    assert sorted(r[0] for r in rows) == list(range(8)), "each point stored once"
    finished = Counter(j["job_index"] for j in harvester.jobs(task_id) if j["status"] == "finished")
    assert finished == {i: 1 for i in range(8)}, "each point evaluated exactly once"
    xs = [p["params"]["x"] for p in summary["points"]]
    assert len(set(xs)) == 8, "no point proposed twice"


def test_missing_metric_file_fails_the_point_and_the_scan_goes_on(harvester: Harvester) -> None:
    """x=1 writes no metrics.json; x=3 one nested too deep to serve back (a failed
    point); x=4 one with a NaN beside its metric (kept, the NaN read as null)."""
    command = (
        'python3 -c \'import functools, json, sys; x = int(sys.argv[1]); doc = {"loss": x}; '
        'doc.update({3: {"deep": functools.reduce(lambda a, _: [a], range(40), [])}, '
        '4: {"odd": float("nan")}}.get(x, {})); '
        'x == 1 or json.dump(doc, open("metrics.json", "w"))\' %{x}'
    )
    task_id = submit_scan(
        harvester,
        "--exec",
        command,
        "--searchSpace",
        '{"x": [0, 1, 2, 3, 4]}',
        "--algorithm",
        "grid",
        "--maxPoints",
        "5",
        "--nParallelEvaluation",
        "3",
        "--outDS",
        "user.alice.nometric",
    )
    task = harvester.wait_task(task_id, 180)
    assert task["status"] == "finished", "partly successful"
    summary = points(harvester, task_id)
    by_x = {p["params"]["x"]: p for p in summary["points"]}
    assert by_x[0]["metric"] == 0 and by_x[2]["metric"] == 2
    assert by_x[1]["status"] == "failed" and by_x[1]["metric"] is None
    assert "metrics.json" in by_x[1]["error"] and '{"loss": <number>}' in by_x[1]["error"]
    assert by_x[3]["status"] == "failed" and by_x[3]["metric"] is None
    assert "metrics.json nests deeper than 32 levels" in by_x[3]["error"]
    assert by_x[4]["metric"] == 4 and by_x[4]["results"]["odd"] is None
    job = next(j for j in harvester.jobs(task_id) if j["job_index"] == 1)
    assert job["pilot_error_code"] == 1306 and job["attempt_nr"] == 1, "not retried"
    assert summary["best"]["params"] == {"x": 0}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--searchSpace", "{not json"], "not valid JSON"),
        (["--searchSpace", '{"x": [1, 2], "z": [3]}'], "defines z but --exec has no %{z}"),
        (["--searchSpace", '{"y": [1, 2]}'], "uses %{x}"),
        (["--maxPoints", "0"], "--maxPoints must be at least 1"),
        (["--nParallelEvaluation", "0"], "--nParallelEvaluation must be at least 1"),
        (["--algorithm", "bayes"], "--algorithm must be one of"),
        (
            [
                "--algorithm",
                "grid",
                "--searchSpace",
                '{"x": {"method": "uniform", "dimension": {"low": 0, "high": 1}}}',
            ],
            '"points"',
        ),
    ],
)
def test_bad_scan_input_is_refused_and_nothing_submitted(
    harvester: Harvester, args: list[str], message: str
) -> None:
    defaults = {"--searchSpace": '{"x": [1, 2]}', "--maxPoints": "2"}
    for i in range(0, len(args), 2):
        defaults.pop(args[i], None)
    flat = [item for pair in defaults.items() for item in pair]
    result = phpo(
        harvester,
        "--containerImage",
        "base",
        "--exec",
        "echo %{x}",
        *flat,
        *args,
        "--outDS",
        "user.alice.bad",
    )
    assert result.returncode == 2, result.output
    assert message in result.stderr
    assert harvester.query("SELECT count(*) FROM tasks")[0][0] == 0


def test_bad_steering_through_the_api_is_a_400(harvester: Harvester) -> None:
    base = {
        "containerImage": "base",
        "transform": "hpo_eval",
        "exec": "echo %{x}",
        "outDS": "user.alice.api",
        "outputs": ["metrics.json"],
    }
    steering = {"kind": "hpo", "searchSpace": {"x": [1, 2]}, "maxPoints": 2}
    cases = [
        ({**base}, "submit it with phpo"),
        ({**base, "steering": {**steering, "maxPoints": 0}}, "maxPoints must be an integer"),
        ({**base, "steering": {**steering, "nParallelEvaluation": -1}}, "nParallelEvaluation"),
        ({**base, "steering": {**steering, "searchSpace": "[1"}}, "not valid JSON"),
        ({**base, "steering": {**steering, "kind": "magic"}}, "steering.kind"),
        ({**base, "steering": {**steering, "maxPoints": 10**6}}, "over the limit"),
        ({**base, "outputs": [], "steering": steering}, "must declare the output metrics.json"),
        ({**base, "exec": "echo %{y}", "steering": steering}, "uses %{y}"),
        ({**base, "steering": {**steering, "seed": "x"}}, "steering.seed"),
    ]
    with harvester.api("alice") as c:
        for body, message in cases:
            reply = c.post("/api/v1/tasks", json=body)
            assert reply.status_code == 400, (body, reply.text)
            assert message in reply.json()["detail"], reply.text
        not_scan = c.post(
            "/api/v1/tasks",
            json={"containerImage": "base", "exec": "true", "outDS": "user.alice.plain"},
        )
        assert not_scan.status_code == 201
        task_id = not_scan.json()["jediTaskID"]
        reply = c.get(f"/api/v1/tasks/{task_id}/points")
        assert reply.status_code == 400 and "not a scan" in reply.json()["detail"]
    with harvester.api("bob") as c:
        assert c.get(f"/api/v1/tasks/{task_id}/points").status_code == 403
    assert harvester.query("SELECT count(*) FROM tasks")[0][0] == 1, "only the valid one"


@pytest.fixture(scope="module")
def hpo_images(image_cache: Path) -> Path:
    """The hpo image (containers/hpo.def: JAX and scikit-learn; a few minutes the first time)."""
    ensure_image(image_cache, "hpo.def", "hpo")
    return image_cache


def test_example_training_scan(hpo_images: Path, harvester: Harvester, tmp_path: Path) -> None:
    """examples/hpo: the JAX MLP on the digits, two learning rates, shipped with --inputFiles."""
    task_id_line = phpo(
        harvester,
        "--containerImage",
        "hpo",
        "--exec",
        "python train.py --lr %{lr} --width %{width} --epochs 8",
        "--searchSpace",
        json.dumps(
            {
                "lr": {
                    "method": "loguniform",
                    "dimension": {"low": 1e-4, "high": 1e-2, "points": 2},
                },
                "width": [32],
            }
        ),
        "--algorithm",
        "grid",
        "--nParallelEvaluation",
        "2",
        "--inputFiles",
        str(REPO / "examples" / "hpo" / "train.py"),
        "--outDS",
        "user.alice.digits",
        "--wait",
        "--timeout",
        "400",
    )
    assert task_id_line.returncode == 0, task_id_line.output
    assert "2 of 2 points evaluated" in task_id_line.stdout
    task_id = int(task_id_line.stdout.split("jediTaskID=")[1].split()[0])
    summary = points(harvester, task_id)
    by_lr = {round(p["params"]["lr"], 6): p for p in summary["points"]}
    fast, slow = by_lr[0.01], by_lr[0.0001]
    assert fast["results"]["device"] == "cpu"
    assert fast["results"]["accuracy"] > 0.9, fast
    assert fast["metric"] < slow["metric"], (
        "a hundred times the learning rate learns more in 8 epochs"
    )
    assert summary["best"]["index"] == fast["index"]
