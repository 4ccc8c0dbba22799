"""Where the next point of a hyperparameter scan comes from.

A proposer is a pure function of the scan's record: the point index, the
points already evaluated and those still running. Nothing lives in memory
between calls, so a restarted harvester proposes exactly what the old one
would have. TPE is Optuna's (ask/tell on an in-memory study rebuilt from the
database each time), imported only when a TPE scan steers.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harvester.scans.space import SearchSpace, Value


@dataclass(frozen=True)
class Evaluation:
    """A point that was evaluated: its metric, or ``None`` when the evaluation failed."""

    params: dict[str, Any]
    value: float | None


class Proposer(ABC):
    """Proposes the parameters of point number ``index``."""

    def __init__(self, space: SearchSpace, *, seed: int, minimize: bool = True) -> None:
        self.space = space
        self.seed = seed
        self.minimize = minimize

    @abstractmethod
    def propose(
        self, index: int, evaluated: Sequence[Evaluation], pending: Sequence[dict[str, Any]]
    ) -> dict[str, Value]:
        """The next point; ``pending`` are proposed points not evaluated yet."""


class GridProposer(Proposer):
    """Every combination once, in order (the scan has at most the grid's size points)."""

    def propose(
        self, index: int, evaluated: Sequence[Evaluation], pending: Sequence[dict[str, Any]]
    ) -> dict[str, Value]:
        return self.space.grid_point(index)


class RandomProposer(Proposer):
    """Independent draws, seeded per point so a restart draws the same ones."""

    def propose(
        self, index: int, evaluated: Sequence[Evaluation], pending: Sequence[dict[str, Any]]
    ) -> dict[str, Value]:
        return self.space.sample(random.Random(f"{self.seed}:{index}"))


class TPEProposer(Proposer):
    """Optuna's Tree-structured Parzen Estimator; running points count as 'constant liars'."""

    def __init__(
        self, space: SearchSpace, *, seed: int, minimize: bool = True, n_startup: int = 10
    ) -> None:
        super().__init__(space, seed=seed, minimize=minimize)
        self.n_startup = n_startup

    def propose(
        self, index: int, evaluated: Sequence[Evaluation], pending: Sequence[dict[str, Any]]
    ) -> dict[str, Value]:
        import optuna
        from optuna.trial import TrialState, create_trial

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        distributions = self._distributions()
        sampler = optuna.samplers.TPESampler(
            seed=(self.seed * 100_003 + index) % 2**32,
            constant_liar=True,
            n_startup_trials=self.n_startup,
        )
        study = optuna.create_study(
            direction="minimize" if self.minimize else "maximize", sampler=sampler
        )
        for item in evaluated:
            params = self._known(item.params)
            if params is None:
                continue
            if item.value is None:
                trial = create_trial(
                    params=params, distributions=distributions, state=TrialState.FAIL
                )
            else:
                trial = create_trial(params=params, distributions=distributions, value=item.value)
            study.add_trial(trial)
        for running in pending:
            params = self._known(running)
            if params is not None:
                study.add_trial(
                    create_trial(
                        params=params, distributions=distributions, state=TrialState.RUNNING
                    )
                )
        asked = study.ask(distributions)
        return {name: _plain(asked.params[name]) for name in self.space.names}

    def _distributions(self) -> dict[str, Any]:
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        result: dict[str, Any] = {}
        for d in self.space.dimensions:
            if d.method == "categorical":
                result[d.name] = CategoricalDistribution(list(d.categories))
            elif d.is_int:
                result[d.name] = IntDistribution(int(d.low), int(d.high), log=d.is_log)
            else:
                result[d.name] = FloatDistribution(d.low, d.high, log=d.is_log)
        return result

    def _known(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """Points outside the space (it cannot change, but be safe) are left out."""
        by_name = {d.name: d for d in self.space.dimensions}
        if set(params) != set(by_name):
            return None
        if not all(by_name[name].contains(value) for name, value in params.items()):
            return None
        return params


def _plain(value: Any) -> Value:
    """JSON-friendly Python scalars (Optuna may hand back NumPy ones)."""
    if isinstance(value, bool | str):
        return value
    if hasattr(value, "item"):
        value = value.item()
    return value


def make_proposer(
    algorithm: str, space: SearchSpace, *, seed: int, minimize: bool, n_startup: int = 10
) -> Proposer:
    if algorithm == "grid":
        return GridProposer(space, seed=seed, minimize=minimize)
    if algorithm == "random":
        return RandomProposer(space, seed=seed, minimize=minimize)
    if algorithm == "tpe":
        return TPEProposer(space, seed=seed, minimize=minimize, n_startup=n_startup)
    raise ValueError(f"unknown algorithm {algorithm!r}")
