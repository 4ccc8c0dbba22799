"""The fits of an asymptotic CLs test for many patches at once, inside XLA.

pyhf's hypotest runs five fits per patch (the POI fixed at the tested value and
free, on the observed data and on the background-only Asimov data; and the
POI fixed at 0 that makes the Asimov data) with scipy's SLSQP, which calls the
compiled objective once per step from Python. On a 1Lbb patch the objective
is about a third of the time; SLSQP and the calls are the rest. Here the fits
of a chunk of patches of one structure (:mod:`pyhf_shared`) run as one
compiled program: a box-constrained BFGS written in JAX, vectorised over the
patches and the fits (``jax.vmap``), with the patches' varying leaves as its
arguments. The free fit on the Asimov data is not run: its minimum is the
fit that made the data (see :func:`_fits`). The p-values are pyhf's own
(:class:`AsymptoticCalculator` given the two test statistics), so only the
minimisation differs from pyhf.

A fit ends when the projected gradient of twice the NLL is below
:data:`GRADIENT_TOLERANCE` in every parameter, or stalls at the precision of
float64 with a small gradient; a patch any of whose fits did neither within
:data:`MAX_EVALUATIONS` (or whose numbers are not finite) is returned as
``None`` and fitted the plain way by the caller. The slow truth is pyhf itself:
the tests compare every value with ``pyhf.infer.hypotest`` on real pallets.

Runs inside the fit image: numpy, jax and pyhf only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyhf_shared import Structure

CHUNK = 8
"""Patches per compiled call; a shorter chunk is padded with copies of its last patch
so that every call of a structure has one shape (one compilation)."""

GRADIENT_TOLERANCE = 1e-5
"""Largest projected gradient of twice the NLL at a fit's end: at most ~1e-9 of the
NLL from the minimum for parameters of unit width, far below what CLs resolves."""

STALLED_TOLERANCE = 1e-3
"""A fit whose line search can no longer decrease the function (it is at the minimum to
the precision of float64 sums) has converged if its projected gradient is below this:
its twice NLL is then within ~1e-6 of the minimum. Above it, the patch is fitted plain."""

MAX_HALVINGS = 10
"""Shortenings of a step (each to between a tenth and a half) before its line search
gives up: the fit has stalled."""

MAX_EVALUATIONS = 200
"""Objective evaluations per fit (steps and their shortenings). Those that converge on
the pallets here take 60 to 180. Every row of a chunk runs until its slowest is done,
so a fit that needs more costs the whole chunk; it stops here and its patch is fitted
one at a time instead."""

TEST_STATISTICS = ("qtilde", "q")
"""The test statistics computed here; any other is fitted the plain way."""


@dataclass(frozen=True)
class TestResult:
    """One patch's CLs, as ``pyhf.infer.hypotest(..., return_expected_set=True)`` gives it."""

    cls_obs: float
    cls_exp: list[float]
    evaluations: int
    """The most objective evaluations one of its five fits took."""


def _minimise(
    value_and_grad: Any, x0: Any, free: Any, lo: Any, hi: Any, inverse_hessian: Any
) -> tuple[Any, Any, Any, Any]:
    """BFGS within the box [lo, hi]; fixed parameters (``free`` false) keep their start.

    A parameter at a bound whose gradient points out of the box is held there for the
    step (its gradient and direction zeroed), and every step is cut to stay in the box,
    then halved until it decreases the function enough (Armijo). Returns the minimum,
    its value, the objective's evaluations, and whether it converged: the projected gradient below
    :data:`GRADIENT_TOLERANCE`, or below :data:`STALLED_TOLERANCE` where no step could
    decrease the function any more.
    """
    import jax.numpy as jnp
    from jax import lax

    def projected(x: Any, g: Any) -> tuple[Any, Any]:
        held = ((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0)) | ~free
        return jnp.where(held, 0.0, g), held

    def not_done(state: Any) -> Any:
        _, _, _, _, done, stalled, evaluations = state
        return ~done & ~stalled & (evaluations < MAX_EVALUATIONS)

    def step(state: Any) -> Any:
        x, f, g, h, finished, stuck, evaluations = state
        # Under vmap a finished row still runs this body (its result is dropped): its line
        # search must not search, or every row would wait for its halvings, every step.
        over = finished | stuck
        pg, held = projected(x, g)
        d = -(h @ pg)
        d = jnp.where(held | ((x <= lo) & (d < 0)) | ((x >= hi) & (d > 0)), 0.0, d)
        slope = d @ pg
        uphill = ~(slope < 0)
        d = jnp.where(uphill, -pg, d)
        slope = jnp.where(uphill, -(pg @ pg), slope)
        to_bound = jnp.where(
            d > 0,
            (hi - x) / jnp.where(d > 0, d, 1.0),
            jnp.where(d < 0, (lo - x) / jnp.where(d < 0, d, -1.0), jnp.inf),
        )
        first = jnp.minimum(1.0, jnp.min(to_bound))

        def too_long(search: Any) -> Any:
            a, fa, _, halvings = search
            enough = jnp.isfinite(fa) & (fa <= f + 1e-4 * a * slope)
            return ~enough & (halvings < MAX_HALVINGS) & ~over

        def shorten(search: Any) -> Any:
            a, fa, _, halvings = search
            # the minimum of the parabola through f, the slope and f(a), kept within
            # [a/10, a/2]; a plain halving where f(a) is not finite
            curvature = fa - f - slope * a
            usable = jnp.isfinite(fa) & (curvature > 0)
            guess = -slope * a * a / (2.0 * jnp.where(usable, curvature, 1.0))
            shorter = jnp.where(usable, jnp.clip(guess, 0.1 * a, 0.5 * a), 0.5 * a)
            a = jnp.where(halvings < 0, 0.5 * a, shorter)
            fa, ga = value_and_grad(jnp.clip(x + a * d, lo, hi))
            return a, fa, ga, halvings + 1

        # the first trial is the full step (``shorten`` of twice it), so that the
        # objective is traced into the program once here, not twice
        a, f_new, g_new, halvings = lax.while_loop(
            too_long, shorten, (2.0 * first, jnp.asarray(jnp.inf, f.dtype), g, -1)
        )
        stalled = (halvings >= MAX_HALVINGS) | ~(f_new <= f)
        x_new = jnp.where(stalled, x, jnp.clip(x + a * d, lo, hi))
        f_new = jnp.where(stalled, f, f_new)
        g_new = jnp.where(stalled, g, g_new)
        s = x_new - x
        y = jnp.where(free, g_new - g, 0.0)
        sy = s @ y
        rho = 1.0 / jnp.where(sy > 1e-12, sy, 1.0)
        hy = h @ y  # the BFGS update in O(n^2): H + (1 + rho y.Hy) rho ss' - rho (Hy s' + s y'H)
        updated = (
            h
            + (1.0 + rho * (y @ hy)) * rho * jnp.outer(s, s)
            - rho * (jnp.outer(hy, s) + jnp.outer(s, hy))
        )
        h = jnp.where(sy > 1e-12, updated, h)
        done = jnp.max(jnp.abs(projected(x_new, g_new)[0])) < GRADIENT_TOLERANCE
        return x_new, f_new, g_new, h, done, stalled, evaluations + halvings + 1

    f0, g0 = value_and_grad(x0)
    start_done = jnp.max(jnp.abs(projected(x0, g0)[0])) < GRADIENT_TOLERANCE
    start = (x0, f0, g0, inverse_hessian, start_done, False, 1)
    x, f, g, _, done, stalled, evaluations = lax.while_loop(not_done, step, start)
    gradient = jnp.max(jnp.abs(projected(x, g)[0]))
    converged = done | (stalled & (gradient < STALLED_TOLERANCE))
    return x, f, evaluations, converged


def _masked_inverse(hessian: Any, free: Any) -> Any:
    """The inverse Hessian of the free parameters (fixed rows and columns zero), its
    eigenvalues floored so that BFGS starts from a positive definite matrix."""
    import jax.numpy as jnp

    both = free[:, None] & free[None, :]
    masked = jnp.where(both, hessian, jnp.eye(hessian.shape[0]))
    masked = 0.5 * (masked + masked.T)
    values, vectors = jnp.linalg.eigh(masked)
    largest = jnp.max(jnp.abs(values))
    values = jnp.maximum(values, 1e-8 * largest)
    return jnp.where(both, (vectors / values) @ vectors.T, 0.0)


def _compiled(structure: Structure) -> Any:
    """:func:`_fits` jitted for this structure, kept on it: one compilation per structure
    and chunk shape. Kept on the object, not in a cache keyed by the structure, because
    structures of two registries in one process may compare equal with different
    templates, and a compilation has its template's values compiled in."""
    compiled = structure.fitted_together
    if compiled is None:
        import jax

        compiled = jax.jit(
            functools.partial(
                _fits, structure=structure, poi_index=structure.template.config.poi_index
            )
        )
        structure.fitted_together = compiled
    return compiled


def _fits(
    leaves: Any,
    data: Any,
    mu: Any,
    init: Any,
    lo: Any,
    hi: Any,
    free: Any,
    *,
    structure: Structure,
    poi_index: int,
) -> dict[str, Any]:
    """The five fits of every patch of a chunk (``leaves`` and ``data`` stacked)."""
    import jax
    import jax.numpy as jnp

    def twice_nll(pars: Any, observed: Any, own: Any) -> Any:
        with structure.bound(own) as model:
            return -2.0 * model.logpdf(pars, observed)[0]

    def expected(pars: Any, own: Any) -> Any:
        with structure.bound(own) as model:
            return model.expected_data(pars)

    first_leaves = tuple(part[0] for part in leaves)
    at_mu = init.at[poi_index].set(mu)
    hessian = jax.hessian(twice_nll)(at_mu, data[0], first_leaves)
    poi_fixed = free.at[poi_index].set(False)
    h_fixed = _masked_inverse(hessian, poi_fixed)
    h_free = _masked_inverse(hessian, free)

    def fit(x0: Any, free_row: Any, h0: Any, observed: Any, own: Any) -> Any:
        value_and_grad = jax.value_and_grad(lambda p: twice_nll(p, observed, own))
        return _minimise(value_and_grad, x0, free_row, lo, hi, h0)

    per_fit = jax.vmap(fit, in_axes=(0, 0, 0, None, None))
    per_patch = jax.vmap(per_fit, in_axes=(None, None, None, 0, 0))
    # Under vmap every row runs until the slowest is done, so each stage has only the
    # fits it needs. On the data: the POI at mu, free, and at 0 (which makes the Asimov
    # data). On the Asimov data only the POI at mu: the Asimov data are the expected data
    # of the fit at 0, so that fit's parameters are the free minimum on them (every
    # Poisson and constraint term at its mode, the POI at its bound), where pyhf
    # finds it again by a fifth fit.
    starts = jnp.stack([at_mu, init, init.at[poi_index].set(0.0)])
    frees = jnp.stack([poi_fixed, free, poi_fixed])
    inverses = jnp.stack([h_fixed, h_free, h_fixed])
    x, f, evaluations, converged = per_patch(starts, frees, inverses, data, leaves)
    at_zero = x[:, 2]
    asimov = jax.vmap(expected)(at_zero, leaves)
    _, f_a, evaluations_a, converged_a = per_patch(
        starts[:1], frees[:1], inverses[:1], asimov, leaves
    )
    free_a = jax.vmap(twice_nll)(at_zero, asimov, leaves)
    return {
        "twice_nll": jnp.concatenate([f[:, :2], f_a, free_a[:, None]], axis=1),
        "muhat": jnp.stack([x[:, 1, poi_index], at_zero[:, poi_index]], axis=1),
        "evaluations": jnp.concatenate([evaluations, evaluations_a], axis=1),
        "converged": jnp.concatenate([converged, converged_a], axis=1),
    }


def hypotests(
    structure: Structure,
    packed: list[tuple[Any, ...]],
    data: list[Any],
    mu: float,
    test_stat: str,
) -> list[TestResult | None]:
    """CLs of each patch (its packed varying leaves and its data) on ``structure``;
    ``None`` for a patch whose fits did not converge (fit it the plain way)."""
    import jax.numpy as jnp

    if test_stat not in TEST_STATISTICS:
        return [None] * len(packed)
    config = structure.template.config
    init = jnp.asarray(config.suggested_init(), dtype=jnp.float64)
    bounds = np.asarray(config.suggested_bounds(), dtype=np.float64)
    free = ~jnp.asarray(config.suggested_fixed(), dtype=bool)
    results: list[TestResult | None] = []
    for start in range(0, len(packed), CHUNK):
        chunk = list(range(start, min(start + CHUNK, len(packed))))
        rows = chunk + [chunk[-1]] * (CHUNK - len(chunk))
        leaves = tuple(jnp.stack([packed[i][part] for i in rows]) for part in range(len(packed[0])))
        stacked = jnp.stack([jnp.asarray(data[i], dtype=jnp.float64) for i in rows])
        found = _compiled(structure)(
            leaves,
            stacked,
            jnp.float64(mu),
            init,
            jnp.asarray(bounds[:, 0]),
            jnp.asarray(bounds[:, 1]),
            free,
        )
        found = {k: np.asarray(v) for k, v in found.items()}
        for row, index in enumerate(chunk):
            results.append(_cls(structure, data[index], mu, test_stat, found, row))
    return results


def _cls(
    structure: Structure,
    data: Any,
    mu: float,
    test_stat: str,
    found: dict[str, Any],
    row: int,
) -> TestResult | None:
    """pyhf's p-values from the two test statistics of one patch."""
    import pyhf

    twice_nll = found["twice_nll"][row]
    if not found["converged"][row].all() or not np.isfinite(twice_nll).all():
        return None
    fixed, free, fixed_a, free_a = (float(v) for v in twice_nll)
    muhat, muhat_a = (float(v) for v in found["muhat"][row])
    qmu = 0.0 if muhat > mu else max(fixed - free, 0.0)
    qmu_a = 0.0 if muhat_a > mu else max(fixed_a - free_a, 0.0)
    sqrt_qmu, sqrt_qmu_a = float(np.sqrt(qmu)), float(np.sqrt(qmu_a))
    if test_stat == "q" or sqrt_qmu <= sqrt_qmu_a:
        teststat = sqrt_qmu - sqrt_qmu_a
    else:
        teststat = (qmu - qmu_a) / (2 * sqrt_qmu_a)
    calculator = pyhf.infer.calculators.AsymptoticCalculator(
        data, structure.template, test_stat=test_stat
    )
    calculator.sqrtqmuA_v = sqrt_qmu_a
    signal_plus_background, background_only = calculator.distributions(mu)
    _, _, cls_obs = calculator.pvalues(teststat, signal_plus_background, background_only)
    _, _, cls_exp = calculator.expected_pvalues(signal_plus_background, background_only)
    return TestResult(
        cls_obs=float(cls_obs),
        cls_exp=[float(v) for v in cls_exp],
        evaluations=int(found["evaluations"][row].max()),
    )
