"""Search spaces of hyperparameter scans, and the ``%{name}`` placeholders that use them.

The JSON follows ATLAS ``phpo``: one entry per parameter, each a ``method``
and its ``dimension``::

    {"lr":     {"method": "loguniform", "dimension": {"low": 1e-4, "high": 1e-1}},
     "layers": {"method": "int", "dimension": {"low": 1, "high": 4}},
     "act":    {"method": "categorical", "dimension": {"categories": ["relu", "tanh"]}}}

A bare list is short for ``categorical``. Continuous ranges take ``"points": K``
for grid scans (K evenly spaced values, log-spaced for ``loguniform``).
Standard library only: the client CLI and the harvester both validate with it.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeGuard

from harvester.errors import InvalidRequest

Value = bool | int | float | str
PLACEHOLDER = re.compile(r"%\{([^}]*)\}")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_DIMENSIONS = 32
MAX_CATEGORIES = 1000
METHODS = ("categorical", "uniform", "loguniform", "int", "logint")


@dataclass(frozen=True)
class Dimension:
    """One parameter: a list of categories, or a (log-)uniform range of floats or integers."""

    name: str
    method: str
    low: float = 0.0
    high: float = 0.0
    categories: tuple[Value, ...] = ()
    points: int | None = None
    """How many values a grid scan takes from a continuous range."""

    @property
    def is_int(self) -> bool:
        return self.method in ("int", "logint")

    @property
    def is_log(self) -> bool:
        return self.method in ("loguniform", "logint")

    def grid(self) -> list[Value]:
        """The values a grid scan visits, or an error saying how to make the range finite."""
        if self.method == "categorical":
            return list(self.categories)
        if self.is_int and self.points is None:
            return list(range(int(self.low), int(self.high) + 1))
        if self.points is None:
            raise InvalidRequest(
                f"search space: {self.name!r} is a continuous range; a grid scan needs "
                f'"points": K in its dimension'
            )
        spaced = _spaced(self.low, self.high, self.points, log=self.is_log)
        if self.is_int:
            return list(sorted({round(v) for v in spaced}))
        return list(spaced)

    def sample(self, rng: random.Random) -> Value:
        if self.method == "categorical":
            return rng.choice(self.categories)
        if self.is_log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        if self.is_int:
            return min(int(self.high), max(int(self.low), round(value)))
        return value

    def contains(self, value: Any) -> bool:
        if self.method == "categorical":
            return value in self.categories
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.is_int and not float(value).is_integer():
            return False
        return self.low <= value <= self.high


@dataclass(frozen=True)
class SearchSpace:
    """The parameters of a scan, in the order the user wrote them."""

    dimensions: tuple[Dimension, ...]

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    def grid_size(self) -> int:
        return math.prod(len(d.grid()) for d in self.dimensions)

    def grid_point(self, index: int) -> dict[str, Value]:
        """The ``index``-th point of the grid (last parameter varies fastest)."""
        axes = [d.grid() for d in self.dimensions]
        point: dict[str, Value] = {}
        for dimension, axis in zip(reversed(self.dimensions), reversed(axes), strict=True):
            index, position = divmod(index, len(axis))
            point[dimension.name] = axis[position]
        return {name: point[name] for name in self.names}

    def grid_points(self) -> Iterator[dict[str, Value]]:
        axes = [d.grid() for d in self.dimensions]
        for values in itertools.product(*axes):
            yield dict(zip(self.names, values, strict=True))

    def sample(self, rng: random.Random) -> dict[str, Value]:
        return {d.name: d.sample(rng) for d in self.dimensions}

    def to_json(self) -> dict[str, Any]:
        """The canonical form stored with the task."""
        document: dict[str, Any] = {}
        for d in self.dimensions:
            if d.method == "categorical":
                dimension: dict[str, Any] = {"categories": list(d.categories)}
            else:
                dimension = {"low": d.low, "high": d.high}
                if d.points is not None:
                    dimension["points"] = d.points
            document[d.name] = {"method": d.method, "dimension": dimension}
        return document


def _spaced(low: float, high: float, n: int, *, log: bool) -> list[float]:
    if n == 1:
        return [math.sqrt(low * high) if log else (low + high) / 2]
    if log:
        a, b = math.log(low), math.log(high)
        return [math.exp(a + (b - a) * i / (n - 1)) for i in range(n)]
    return [low + (high - low) * i / (n - 1) for i in range(n)]


def parse_search_space(document: Any) -> SearchSpace:
    """Validate a search-space document; every error names the parameter at fault."""
    if isinstance(document, str):
        try:
            document = json.loads(document)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"search space is not valid JSON: {exc}") from exc
    document = _single_segment(document)
    if not isinstance(document, dict) or not document:
        raise InvalidRequest("search space must be a non-empty JSON object of parameters")
    if len(document) > MAX_DIMENSIONS:
        raise InvalidRequest(
            f"search space has {len(document)} parameters; at most {MAX_DIMENSIONS}"
        )
    return SearchSpace(tuple(_dimension(name, spec) for name, spec in document.items()))


def _single_segment(document: Any) -> Any:
    """panda-client's ``--searchSpaceFile`` may hold a list of search spaces, one per
    segment of a segmented HPO (``[{...}]`` or ``[{"model_id": 0, "search_space":
    {...}}]``); one segment is the plain space, several are not supported here."""
    if not isinstance(document, list) or not document:
        return document
    if len(document) != 1:
        raise InvalidRequest(
            f"the search space file lists {len(document)} search spaces (segmented HPO, "
            "panda-client's --segmentSpecFile): hpcaf scans one space per task; submit one "
            "task per segment"
        )
    single = document[0]
    if isinstance(single, dict) and set(single) <= {"model_id", "search_space"}:
        single = single.get("search_space")
    return single


def _dimension(name: str, spec: Any) -> Dimension:
    where = f"search space: parameter {name!r}"
    if not NAME.match(name):
        raise InvalidRequest(
            f"{where}: names are letters, digits and '_', not starting with a digit"
        )
    if isinstance(spec, list):
        spec = {"method": "categorical", "dimension": {"categories": spec}}
    if not isinstance(spec, dict):
        raise InvalidRequest(f"{where}: expected {{'method': ..., 'dimension': {{...}}}} or a list")
    unknown = set(spec) - {"method", "dimension"}
    if unknown:
        raise InvalidRequest(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    method = spec.get("method")
    if method not in METHODS:
        raise InvalidRequest(f"{where}: method must be one of {', '.join(METHODS)}, not {method!r}")
    dimension = spec.get("dimension")
    if not isinstance(dimension, dict):
        raise InvalidRequest(f"{where}: 'dimension' must be an object")
    if method == "categorical":
        return _categorical(name, where, dimension)
    return _range(name, where, method, dimension)


def _categorical(name: str, where: str, dimension: dict[str, Any]) -> Dimension:
    if set(dimension) != {"categories"}:
        raise InvalidRequest(f"{where}: a categorical dimension has only 'categories'")
    categories = dimension["categories"]
    if not isinstance(categories, list) or not categories:
        raise InvalidRequest(f"{where}: 'categories' must be a non-empty list")
    if len(categories) > MAX_CATEGORIES:
        raise InvalidRequest(f"{where}: more than {MAX_CATEGORIES} categories")
    for value in categories:
        if not isinstance(value, bool | int | float | str) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            raise InvalidRequest(f"{where}: categories must be numbers, strings or booleans")
    if len({json.dumps(v) for v in categories}) != len(categories):
        raise InvalidRequest(f"{where}: categories repeat")
    return Dimension(name, "categorical", categories=tuple(categories))


def _range(name: str, where: str, method: str, dimension: dict[str, Any]) -> Dimension:
    unknown = set(dimension) - {"low", "high", "points"}
    if unknown:
        raise InvalidRequest(f"{where}: unknown dimension keys {', '.join(sorted(unknown))}")
    bounds = []
    for key in ("low", "high"):
        value = dimension.get(key)
        if not _finite_number(value):
            raise InvalidRequest(f"{where}: '{key}' must be a finite number")
        if method in ("int", "logint") and not float(value).is_integer():
            raise InvalidRequest(f"{where}: '{key}' must be an integer for method {method}")
        bounds.append(float(value))
    low, high = bounds
    if not low < high:
        raise InvalidRequest(f"{where}: 'low' must be below 'high'")
    if method in ("loguniform", "logint") and low <= 0:
        raise InvalidRequest(f"{where}: a log range needs 'low' > 0")
    points = dimension.get("points")
    if points is not None and (
        isinstance(points, bool) or not isinstance(points, int) or not 1 <= points <= 10_000
    ):
        raise InvalidRequest(f"{where}: 'points' must be an integer from 1 to 10000")
    return Dimension(name, method, low=low, high=high, points=points)


def _finite_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def placeholders(command: str) -> list[str]:
    """The ``%{name}`` placeholders of an ``--exec`` string, in order of appearance."""
    return list(dict.fromkeys(PLACEHOLDER.findall(command)))


def check_placeholders(command: str, space: SearchSpace) -> None:
    """Every placeholder names a parameter, and every parameter is used unless none is
    (then the command reads the point from ``input.json``, as panda-client's do)."""
    used = placeholders(command)
    bad = [name for name in used if not NAME.match(name)]
    if bad:
        raise InvalidRequest(f"--exec has a malformed placeholder %{{{bad[0]}}}")
    undefined = [name for name in used if name not in space.names]
    if undefined:
        raise InvalidRequest(
            f"--exec uses {', '.join('%{' + n + '}' for n in undefined)} but the search space "
            f"defines only {', '.join(space.names)}"
        )
    unused = [name for name in space.names if name not in used]
    if unused and used:  # no placeholder at all: the command reads input.json (panda-client)
        raise InvalidRequest(
            f"the search space defines {', '.join(unused)} but --exec has no "
            f"{', '.join('%{' + n + '}' for n in unused)} placeholder"
        )
