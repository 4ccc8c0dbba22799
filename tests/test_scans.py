"""Scan logic without processes: search spaces, placeholders, proposers, the adaptive scan."""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

import pytest

from harvester.errors import InvalidRequest
from harvester.scans.adaptive import AdaptivePlan, decisions, next_patches
from harvester.scans.proposers import Evaluation, make_proposer
from harvester.scans.space import check_placeholders, parse_search_space, placeholders

SPACE = {
    "lr": {"method": "loguniform", "dimension": {"low": 1e-4, "high": 1e-1, "points": 4}},
    "layers": {"method": "int", "dimension": {"low": 1, "high": 3}},
    "act": ["relu", "tanh"],
}


def test_space_parses_and_grids_in_order() -> None:
    space = parse_search_space(SPACE)
    assert space.names == ["lr", "layers", "act"]
    assert space.grid_size() == 4 * 3 * 2
    points = list(space.grid_points())
    assert [space.grid_point(i) for i in range(len(points))] == points
    assert points[0] == {"lr": pytest.approx(1e-4), "layers": 1, "act": "relu"}
    assert points[1]["act"] == "tanh", "the last parameter varies fastest"
    assert sorted({round(p["lr"], 8) for p in points}) == [0.0001, 0.001, 0.01, 0.1]
    assert parse_search_space(space.to_json()) == space, "the stored form reads back the same"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "not valid JSON"),
        ([], "non-empty JSON object"),
        ({}, "non-empty JSON object"),
        ({"1x": [1, 2]}, "names are letters"),
        ({"x": {"method": "gauss", "dimension": {}}}, "method must be one of"),
        ({"x": {"method": "uniform", "dimension": {"low": 2, "high": 1}}}, "'low' must be below"),
        ({"x": {"method": "uniform", "dimension": {"low": "a", "high": 1}}}, "finite number"),
        ({"x": {"method": "loguniform", "dimension": {"low": 0, "high": 1}}}, "needs 'low' > 0"),
        ({"x": {"method": "int", "dimension": {"low": 0.5, "high": 3}}}, "must be an integer"),
        ({"x": {"method": "categorical", "dimension": {"categories": []}}}, "non-empty list"),
        ({"x": [1, 1]}, "categories repeat"),
        ({"x": [{"a": 1}]}, "numbers, strings or booleans"),
        ({"x": {"method": "uniform", "dimension": {"low": 0, "high": 1}, "extra": 1}}, "unknown"),
    ],
)
def test_bad_spaces_are_refused_with_the_reason(document: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_search_space(document)


def test_grid_of_a_continuous_range_needs_points() -> None:
    space = parse_search_space({"x": {"method": "uniform", "dimension": {"low": 0, "high": 1}}})
    with pytest.raises(InvalidRequest, match='"points"'):
        space.grid_size()


def test_placeholders_must_match_the_space() -> None:
    space = parse_search_space({"lr": [0.1, 0.2], "width": [8, 16]})
    command = "python train.py --lr %{lr} --width %{width} --again %{lr}"
    assert placeholders(command) == ["lr", "width"]
    check_placeholders(command, space)
    with pytest.raises(InvalidRequest, match=r"uses %\{depth\}"):
        check_placeholders("train --lr %{lr} --width %{width} --depth %{depth}", space)
    with pytest.raises(InvalidRequest, match=r"defines width but --exec has no %\{width\}"):
        check_placeholders("train --lr %{lr}", space)
    with pytest.raises(InvalidRequest, match="malformed placeholder"):
        check_placeholders("train %{lr} %{width} %{a b}", space)


def _loss(point: dict[str, Any]) -> float:
    return (math.log10(point["lr"]) + 2.0) ** 2 + 0.1 * (point["layers"] - 2) ** 2


@pytest.mark.parametrize("algorithm", ["grid", "random", "tpe"])
def test_proposers_are_pure_functions_of_the_record(algorithm: str) -> None:
    """A restarted harvester proposes what the old one would have: same record, same point."""
    space = parse_search_space(SPACE)
    evaluated: list[Evaluation] = []
    pending: list[dict[str, Any]] = []
    for index in range(12):
        first = make_proposer(algorithm, space, seed=7, minimize=True, n_startup=4)
        again = make_proposer(algorithm, space, seed=7, minimize=True, n_startup=4)
        point = first.propose(index, evaluated, pending)
        assert point == again.propose(index, evaluated, pending)
        assert set(point) == set(space.names)
        assert all(d.contains(point[d.name]) for d in space.dimensions), point
        if index % 3 == 2:
            pending.append(point)  # still running
        else:
            evaluated.append(Evaluation(point, None if index == 4 else _loss(point)))


def test_tpe_homes_in_on_the_minimum() -> None:
    """Over 40 points TPE gets near the optimum (lr = 1e-2, layers = 2), and its later
    proposals are typically much better than random ones."""
    space = parse_search_space(
        {
            "lr": {"method": "loguniform", "dimension": {"low": 1e-5, "high": 1.0}},
            "layers": {"method": "int", "dimension": {"low": 1, "high": 3}},
        }
    )
    tpe = make_proposer("tpe", space, seed=1, minimize=True, n_startup=8)
    evaluated: list[Evaluation] = []
    for index in range(40):
        point = tpe.propose(index, evaluated, [])
        evaluated.append(Evaluation(point, _loss(point)))
    best = min(e.value for e in evaluated if e.value is not None)
    rng = random.Random(3)
    random_median = statistics.median(_loss(space.sample(rng)) for _ in range(200))
    assert best < 0.05 < random_median
    late = [e.value for e in evaluated[20:] if e.value is not None]
    assert statistics.median(late) < random_median / 2, "later proposals gather near the minimum"


def test_maximize_prefers_large_metrics() -> None:
    space = parse_search_space({"x": {"method": "uniform", "dimension": {"low": 0, "high": 1}}})
    tpe = make_proposer("tpe", space, seed=2, minimize=False, n_startup=5)
    evaluated: list[Evaluation] = []
    for index in range(30):
        point = tpe.propose(index, evaluated, [])
        evaluated.append(Evaluation(point, float(point["x"])))
    late = [e.params["x"] for e in evaluated[15:]]
    assert sum(late) / len(late) > 0.6


def _plane() -> tuple[dict[str, list[float]], dict[str, float]]:
    """A 12x10 mass plane whose CLs crosses 0.05 along a curve (a stand-in for a pallet)."""
    points, cls = {}, {}
    for i in range(12):
        for j in range(10):
            if j > i:  # the kinematically forbidden corner, as in real pallets
                continue
            m1, m2 = 100 + 50 * i, 20 * j
            name = f"P_{m1}_{m2}"
            points[name] = [float(m1), float(m2)]
            # excluded (small CLs) at low m1, less so near the diagonal
            cls[name] = 0.05 * math.exp((m1 - 420 + 1.5 * m2) / 60)
    return points, cls


def test_adaptive_scan_finds_the_contour_with_fewer_fits() -> None:
    points, truth = _plane()
    plan = AdaptivePlan(initial=12)
    fitted: dict[str, float] = {}
    rounds = 0
    while True:
        chosen = next_patches(points, fitted, set(), set(), plan, room=6)
        if chosen is None:
            break
        assert chosen, "nothing pending, so it proposes or stops"
        for name in chosen:
            assert name not in fitted, "a patch is never fitted twice"
            fitted[name] = truth[name]
        rounds += 1
        assert rounds < 100
    assert len(fitted) < len(points) * 0.7, (len(fitted), len(points))
    predicted = decisions(points, fitted, plan)
    wrong = [n for n in points if predicted[n] != (truth[n] < 0.05)]
    assert wrong == [], f"misclassified: {wrong}"


def test_adaptive_scan_waits_for_the_coarse_picture() -> None:
    points, truth = _plane()
    plan = AdaptivePlan(initial=8)
    first = next_patches(points, {}, set(), set(), plan, room=5)
    assert first is not None and len(first) == 5
    rest = next_patches(points, {}, set(), set(first), plan, room=5)
    assert rest is not None and len(rest) == 3, "the other three of the coarse design"
    fitted = {n: truth[n] for n in first}
    assert next_patches(points, fitted, set(), set(rest), plan, room=5) == [], "wait for them"


def _scan_task(session: Any, searchspace: Any, **steering: Any) -> int:
    from db.models import Task
    from protocol.states import TaskStatus

    task = Task(
        name="scan",
        owner="alice",
        status=TaskStatus.READY,
        kind="hpo_eval",
        params={  # as submit_task stores them: the required fields, and the steering
            "containerImage": "base",
            "outDS": "user.alice.scan",
            "transform": "hpo_eval",
            "steering": {
                "kind": "hpo",
                "algorithm": "random",
                "searchSpace": searchspace,
                "maxPoints": 5,
                "nParallelEvaluation": 2,
                "minimize": True,
                "metric": "loss",
                "seed": 1,
                **steering,
            },
        },
        image="base",
        out_ds="user.alice.scan",
        n_jobs=5,
    )
    session.add(task)
    session.commit()
    return int(task.id)


def test_steering_makes_k_points_with_their_jobs(session_factory: Any) -> None:
    from types import SimpleNamespace

    from sqlalchemy import select

    from db.models import Job, ScanPoint
    from harvester.agents.steering import Steering

    with session_factory() as session:
        task_id = _scan_task(session, {"x": [1, 2, 3]})
    agent = Steering(SimpleNamespace(sessions=session_factory), interval_s=1)  # type: ignore[arg-type]
    agent.run_once()
    agent.run_once()  # nothing has ended: no room for more
    with session_factory() as session:
        points = session.scalars(select(ScanPoint).where(ScanPoint.task_id == task_id)).all()
        jobs = session.scalars(select(Job).where(Job.task_id == task_id)).all()
        assert sorted(p.point_index for p in points) == [0, 1]
        assert sorted(j.job_index for j in jobs) == [0, 1]
        assert all(j.spec["parameters"]["point"]["x"] in (1, 2, 3) for j in jobs)


def test_a_scan_that_cannot_be_steered_is_broken_with_the_reason(session_factory: Any) -> None:
    from types import SimpleNamespace

    from db.models import Task
    from harvester.agents.steering import Steering

    with session_factory() as session:
        task_id = _scan_task(session, {"x": {"method": "nope", "dimension": {}}})
    Steering(SimpleNamespace(sessions=session_factory), interval_s=1).run_once()  # type: ignore[arg-type]
    with session_factory() as session:
        task = session.get(Task, task_id)
        assert task is not None and task.status.value == "broken"
        assert "steering failed" in (task.error_dialog or "") and "method" in task.error_dialog
