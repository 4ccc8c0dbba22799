"""Adaptive fit scans: find a pallet's CLs = 0.05 contour without fitting every patch.

Each patch is a point in its signal-model plane (the patch's ``values``, e.g.
two masses). The scan fits a coarse, space-filling subset first, then only the
patches whose exclusion is still in doubt: those whose nearest fitted
neighbours disagree about being excluded. It stops when no unfitted patch is
in doubt; the others inherit the decision of their neighbours. Pure Python:
pallets have hundreds of patches, not millions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Coordinates = tuple[float, ...]


@dataclass(frozen=True)
class AdaptivePlan:
    """How the scan explores: the coarse design's size, the neighbours that vote, the level."""

    initial: int
    neighbours: int = 4
    target: float = 0.05


def normalise(points: Mapping[str, Sequence[float]]) -> dict[str, Coordinates]:
    """Scale every axis to [0, 1] so masses in GeV and ratios weigh alike."""
    names = list(points)
    dims = len(points[names[0]])
    lows = [min(points[n][i] for n in names) for i in range(dims)]
    highs = [max(points[n][i] for n in names) for i in range(dims)]
    return {
        n: tuple(
            (points[n][i] - lows[i]) / (highs[i] - lows[i]) if highs[i] > lows[i] else 0.0
            for i in range(dims)
        )
        for n in names
    }


def _distance(a: Coordinates, b: Coordinates) -> float:
    return math.dist(a, b)


def coarse_design(coords: Mapping[str, Coordinates], n: int) -> list[str]:
    """Farthest-point sampling: each next patch is the one farthest from those chosen."""
    names = sorted(coords)
    if not names:
        return []
    centre = tuple(
        sum(c[i] for c in coords.values()) / len(coords) for i in range(len(coords[names[0]]))
    )
    chosen = [min(names, key=lambda name: (_distance(coords[name], centre), name))]
    nearest = {name: _distance(coords[name], coords[chosen[0]]) for name in names}
    while len(chosen) < min(n, len(names)):
        best = max(names, key=lambda name: (nearest[name], name))
        chosen.append(best)
        for name in names:
            nearest[name] = min(nearest[name], _distance(coords[name], coords[best]))
    return chosen


def neighbours(
    coords: Mapping[str, Coordinates], fitted: Mapping[str, float], name: str, k: int
) -> list[tuple[float, str]]:
    """The ``k`` fitted patches nearest to ``name`` (distance, patch)."""
    ranked = sorted(
        (_distance(coords[name], coords[other]), other) for other in fitted if other != name
    )
    return ranked[:k]


def predicted_log_cls(
    coords: Mapping[str, Coordinates], fitted: Mapping[str, float], name: str, k: int
) -> float:
    """Inverse-distance-weighted log CLs at ``name`` from its fitted neighbours."""
    if name in fitted:
        return math.log(max(fitted[name], 1e-300))
    near = neighbours(coords, fitted, name, k)
    if not near:
        return 0.0
    weights = [1.0 / max(d, 1e-12) ** 2 for d, _ in near]
    logs = [math.log(max(fitted[other], 1e-300)) for _, other in near]
    return sum(w * v for w, v in zip(weights, logs, strict=True)) / sum(weights)


def in_doubt(
    coords: Mapping[str, Coordinates], fitted: Mapping[str, float], name: str, plan: AdaptivePlan
) -> bool:
    """An unfitted patch is in doubt while its fitted neighbours disagree on exclusion."""
    near = neighbours(coords, fitted, name, plan.neighbours)
    votes = {fitted[other] < plan.target for _, other in near}
    return len(votes) > 1 or not near


def next_patches(
    points: Mapping[str, Sequence[float]],
    fitted: Mapping[str, float],
    failed: set[str],
    pending: set[str],
    plan: AdaptivePlan,
    room: int,
) -> list[str] | None:
    """Up to ``room`` patches to fit next; ``None`` once the scan is complete.

    ``fitted`` maps patch → CLs_obs of finished fits; ``failed`` fits count as
    tried (they are not proposed again); ``pending`` are being fitted now.
    """
    coords = normalise(points)
    tried = set(fitted) | failed | pending
    design = [name for name in coarse_design(coords, plan.initial) if name not in tried]
    if design:
        return design[:room]
    if any(name in pending for name in coarse_design(coords, plan.initial)):
        return []  # wait for the coarse picture before refining it
    candidates = [name for name in sorted(coords) if name not in tried]
    doubtful = [name for name in candidates if in_doubt(coords, fitted, name, plan)]
    if not doubtful:
        return None if not pending else []
    target = math.log(plan.target)
    doubtful.sort(
        key=lambda name: (
            abs(predicted_log_cls(coords, fitted, name, plan.neighbours) - target),
            name,
        )
    )
    return doubtful[:room]


def decisions(
    points: Mapping[str, Sequence[float]], fitted: Mapping[str, float], plan: AdaptivePlan
) -> dict[str, bool]:
    """Excluded or not, for every patch: fitted ones by their CLs, others by their neighbours."""
    coords = normalise(points)
    target = math.log(plan.target)
    return {
        name: predicted_log_cls(coords, fitted, name, plan.neighbours) < target
        for name in sorted(coords)
    }
