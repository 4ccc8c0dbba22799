"""The exclusion plot of a fit campaign: CLs = 0.05 contours over the two mass axes.

matplotlib is imported here only (headless Agg backend), never at CLI start-up.
The clients (``pbook``, ``pfit``) and the dashboard draw the same plots, so this
module belongs to neither: clients import no server module, and the server no
client module. It imports nothing of hpcaf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LEVEL = 0.05


@dataclass
class Contours:
    """Contour lines (lists of (x, y) vertex arrays) at CLs = 0.05."""

    observed: list[Any] = field(default_factory=list)
    expected: list[Any] = field(default_factory=list)
    expected_1sigma: list[Any] = field(default_factory=list)
    expected_2sigma: list[Any] = field(default_factory=list)
    points: int = 0


def fitted_points(
    results: dict[str, Any],
) -> tuple[list[float], list[float], list[float], list[list[float]]]:
    """x, y (first two metadata values), CLs_obs and CLs_exp of the patches that fitted."""
    xs, ys, obs, exp = [], [], [], []
    for entry in results.values():
        if entry.get("status") != "ok":
            continue
        values = entry["metadata"]["values"]
        xs.append(float(values[0]))
        ys.append(float(values[1]))
        obs.append(float(entry["CLs_obs"]))
        exp.append([float(v) for v in entry["CLs_exp"]])
    return xs, ys, obs, exp


def _lines(contour_set: Any) -> list[Any]:
    return [path.vertices for path in contour_set.get_paths() if len(path.vertices)]


def plot_exclusion(
    results: dict[str, Any],
    path: Path,
    *,
    title: str = "",
    labels: tuple[str, str] = ("m1 [GeV]", "m2 [GeV]"),
) -> Contours:
    """Draw the exclusion picture to ``path`` (PNG) and return the contour data drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.tri as mtri
    import numpy as np

    xs, ys, obs, exp = fitted_points(results)
    if len(xs) < 3:
        raise ValueError(f"an exclusion plot needs at least 3 fitted points, got {len(xs)}")
    x, y = np.asarray(xs), np.asarray(ys)
    e = np.asarray(exp)
    tri = mtri.Triangulation(x, y)
    fig, ax = plt.subplots(figsize=(7, 5.5), dpi=120)
    contours = Contours(points=len(xs))
    band2 = (e[:, 0] - LEVEL) * (e[:, 4] - LEVEL)
    band1 = (e[:, 1] - LEVEL) * (e[:, 3] - LEVEL)
    if band2.min() < 0:
        ax.tricontourf(tri, band2, levels=[band2.min() - 1, 0], colors=["#ffe840"], zorder=1)
    if band1.min() < 0:
        ax.tricontourf(tri, band1, levels=[band1.min() - 1, 0], colors=["#5fd35f"], zorder=2)
    for k, target in (
        (0, "expected_2sigma"),
        (4, "expected_2sigma"),
        (1, "expected_1sigma"),
        (3, "expected_1sigma"),
    ):
        cs = ax.tricontour(tri, e[:, k], levels=[LEVEL], colors="none")
        getattr(contours, target).extend(_lines(cs))
    cs_exp = ax.tricontour(
        tri, e[:, 2], levels=[LEVEL], colors="black", linestyles="dashed", linewidths=1.5, zorder=3
    )
    contours.expected = _lines(cs_exp)
    cs_obs = ax.tricontour(
        tri, np.asarray(obs), levels=[LEVEL], colors="firebrick", linewidths=2, zorder=4
    )
    contours.observed = _lines(cs_obs)
    ax.scatter(x, y, s=8, c="grey", zorder=5, label="fitted signal points")
    handles = [
        plt.Line2D([], [], color="firebrick", lw=2, label="observed CLs = 0.05"),
        plt.Line2D([], [], color="black", ls="dashed", lw=1.5, label="expected CLs = 0.05"),
        plt.Rectangle((0, 0), 1, 1, color="#5fd35f", label=r"expected $\pm1\sigma$"),
        plt.Rectangle((0, 0), 1, 1, color="#ffe840", label=r"expected $\pm2\sigma$"),
    ]
    ax.legend(handles=handles, loc="upper left", fontsize=8, frameon=False)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(title or f"exclusion from {len(xs)} fitted points")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return contours


def plot_scan(summary: dict[str, Any], path: Path) -> int:
    """A hyperparameter scan: the metric against each parameter, best point marked.

    Returns how many evaluated points were drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in summary["points"] if p["metric"] is not None]
    if not points:
        raise ValueError("no point of this scan has a metric yet; nothing to plot")
    names = list(points[0]["params"])
    metric = summary.get("metric") or "metric"
    best = summary.get("best")
    fig, axes = plt.subplots(
        1, len(names), figsize=(4 * len(names), 3.6), dpi=110, squeeze=False, sharey=True
    )
    for ax, name in zip(axes[0], names, strict=True):
        values = [p["params"][name] for p in points]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        xs: list[Any] = values if numeric else [str(v) for v in values]
        ax.scatter(xs, [p["metric"] for p in points], s=18, c="steelblue")
        if best is not None:
            bx = best["params"][name]
            ax.scatter(
                [bx if numeric else str(bx)],
                [best["metric"]],
                s=60,
                c="firebrick",
                marker="*",
                zorder=3,
                label="best",
            )
        dimension = (summary.get("searchSpace") or {}).get(name, {})
        if numeric and dimension.get("method") in ("loguniform", "logint"):
            ax.set_xscale("log")
        ax.set_xlabel(name)
    axes[0][0].set_ylabel(metric)
    if best is not None:
        axes[0][0].legend(fontsize=8, frameon=False)
    fig.suptitle(f"task {summary['jediTaskID']}: {len(points)} points")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return len(points)
