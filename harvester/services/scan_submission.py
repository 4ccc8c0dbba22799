"""A steered task's parameters, checked and normalised when the task is submitted.

A scan's ``steering`` parameters are checked once, before anything is stored:
the kind (``hpo`` for ``phpo``, ``adaptive_cls`` for ``pfit --adaptive``),
the search space or the patches, the limits. What is stored is the
normalised form the steering agent reads back (:mod:`harvester.services.scan_steering`).
"""

from __future__ import annotations

import math
import secrets
from typing import Any

from harvester.errors import InvalidRequest
from harvester.scans.algorithms import ALGORITHMS
from harvester.scans.space import check_placeholders, parse_search_space
from protocol.tasks import TaskCreate

HPO = "hpo"
ADAPTIVE = "adaptive_cls"
METRICS_FILE = "metrics.json"
MAX_PARALLEL = 10_000


def check_steering(params: TaskCreate, max_jobs: int) -> tuple[dict[str, Any], int]:
    """Validate a steered task's parameters; the normalised steering and the task's size."""
    steering = params.steering or {}
    kind = steering.get("kind")
    if params.jobParameters is not None:
        raise InvalidRequest("a steered task makes its own jobs; do not give jobParameters")
    if kind == HPO:
        return _check_hpo(params, steering, max_jobs)
    if kind == ADAPTIVE:
        return _check_adaptive(params, steering, max_jobs)
    raise InvalidRequest(f"steering.kind must be {HPO!r} or {ADAPTIVE!r}, not {kind!r}")


def _positive_int(steering: dict[str, Any], key: str, *, default: int | None = None) -> int:
    value = steering.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"steering.{key} must be an integer of at least 1, not {value!r}")
    return value


def _check_hpo(
    params: TaskCreate, steering: dict[str, Any], max_jobs: int
) -> tuple[dict[str, Any], int]:
    if params.transform != "hpo_eval":
        raise InvalidRequest("a hyperparameter scan runs the hpo_eval transform")
    known = {
        "kind",
        "algorithm",
        "searchSpace",
        "maxPoints",
        "nParallelEvaluation",
        "minimize",
        "metric",
        "seed",
        "nStartup",
    }
    unknown = set(steering) - known
    if unknown:
        raise InvalidRequest(f"unknown steering keys: {', '.join(sorted(unknown))}")
    space = parse_search_space(steering.get("searchSpace"))
    check_placeholders(params.exec, space)
    algorithm = steering.get("algorithm", "tpe")
    if algorithm not in ALGORITHMS:
        raise InvalidRequest(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}")
    max_points = _positive_int(steering, "maxPoints")
    parallel = _positive_int(steering, "nParallelEvaluation", default=1)
    if parallel > MAX_PARALLEL:
        raise InvalidRequest(f"steering.nParallelEvaluation must be at most {MAX_PARALLEL}")
    n_points = min(max_points, space.grid_size()) if algorithm == "grid" else max_points
    if n_points > max_jobs:
        raise InvalidRequest(f"maxPoints={n_points} is over the limit of {max_jobs} jobs per task")
    metric = steering.get("metric", "loss")
    if not isinstance(metric, str) or not metric or len(metric) > 128:
        raise InvalidRequest("steering.metric must be the name of a key of metrics.json")
    seed = steering.get("seed")
    if seed is None:
        seed = secrets.randbelow(2**31)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise InvalidRequest("steering.seed must be an integer from 0 to 2**31-1")
    minimize = steering.get("minimize", True)
    if not isinstance(minimize, bool):
        raise InvalidRequest("steering.minimize must be true or false")
    if METRICS_FILE not in params.outputs:
        raise InvalidRequest(f"a hyperparameter scan must declare the output {METRICS_FILE}")
    normalised = {
        "kind": HPO,
        "algorithm": algorithm,
        "searchSpace": space.to_json(),
        "maxPoints": max_points,
        "nParallelEvaluation": parallel,
        "minimize": minimize,
        "metric": metric,
        "seed": seed,
        "nStartup": _positive_int(steering, "nStartup", default=min(10, max(2, n_points // 3))),
    }
    return normalised, n_points


def _check_adaptive(
    params: TaskCreate, steering: dict[str, Any], max_jobs: int
) -> tuple[dict[str, Any], int]:
    if params.transform != "pyhf_fit":
        raise InvalidRequest("an adaptive fit scan runs the pyhf_fit transform")
    known = {"kind", "points", "initial", "nParallelEvaluation", "target", "neighbours"}
    unknown = set(steering) - known
    if unknown:
        raise InvalidRequest(f"unknown steering keys: {', '.join(sorted(unknown))}")
    points = steering.get("points")
    if not isinstance(points, dict) or len(points) < 2:
        raise InvalidRequest("steering.points must map at least two patch names to coordinates")
    if len(points) > max_jobs:
        raise InvalidRequest(f"{len(points)} patches is over the limit of {max_jobs} jobs per task")
    dims = None
    for name, values in points.items():
        if (
            not isinstance(values, list)
            or not 1 <= len(values) <= 3
            or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in values
            )
        ):
            raise InvalidRequest(f"steering.points[{name!r}] must be a list of 1 to 3 numbers")
        if dims is not None and len(values) != dims:
            raise InvalidRequest("every patch needs the same number of coordinates")
        dims = len(values)
    target = steering.get("target", 0.05)
    if not isinstance(target, float) or not 0 < target < 1:
        raise InvalidRequest("steering.target must be a CLs level between 0 and 1")
    normalised = {
        "kind": ADAPTIVE,
        "points": points,
        "initial": min(
            len(points), _positive_int(steering, "initial", default=max(4, len(points) // 4))
        ),
        "nParallelEvaluation": _positive_int(steering, "nParallelEvaluation", default=8),
        "target": target,
        "neighbours": _positive_int(steering, "neighbours", default=4),
    }
    return normalised, len(points)
