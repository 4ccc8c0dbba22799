#!/usr/bin/env python3
"""Adaptive fit scan against the whole pallet: fits needed, decisions, contour distance.

Starts its own harvester (one local pilot per core), runs ``pfit`` on every
patch of the pallet and ``pfit --adaptive`` on the same pallet, both with the
jax backend, and prints:
- the wall time and the number of fits of each;
- how many exclusion decisions (CLs_obs < 0.05) of the adaptive scan differ
  from the full pallet's, over all patches and over the patches next to the
  contour (whose nearest neighbours disagree);
- the distance between the two observed CLs = 0.05 contours, in the pallet's
  own units (GeV for mass planes): median and largest distance from a point of
  one contour to the other, both ways;
- the largest difference of the adaptive scan's fits, and of the full run's,
  from pyhf run directly (``verify_pallets.py``'s cached reference; fitted on
  the first run, slow), and the decisions that differ from pyhf's.

    python bench/adaptive_scan.py --pallet staus/Region-combined [--initial N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from local_harvester import REPO, local_harvester
from verify_pallets import reference

from harvester.scans.adaptive import (
    AdaptivePlan,
    decisions,
    neighbours,
    normalise,
    predicted_log_cls,
)


def run(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.time()
    done = subprocess.run(
        [sys.executable, "-m", *args], env=env, check=True, capture_output=True, text=True
    )
    return time.time() - start, done.stdout


def task_id(stdout: str) -> int:
    return int(stdout.split("jediTaskID=")[1].split()[0])


def contour(points: dict[str, list[float]], cls: dict[str, float]) -> list[tuple[float, float]]:
    """Vertices of the CLs = 0.05 contour of ``cls`` over the first two coordinates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.tri as mtri
    import numpy as np

    names = sorted(points)
    tri = mtri.Triangulation([points[n][0] for n in names], [points[n][1] for n in names])
    fig, ax = plt.subplots()
    cs = ax.tricontour(tri, np.asarray([cls[n] for n in names]), levels=[0.05])
    vertices = [tuple(v) for path in cs.get_paths() for v in path.vertices]
    plt.close(fig)
    return vertices  # type: ignore[return-value]


def distances(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[float]:
    return [min(math.dist(p, q) for q in b) for p in a] if a and b else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pallet", default="staus/Region-combined", help="under HPCAF_PALLETS")
    parser.add_argument("--initial", type=int, default=None, help="size of the coarse design")
    parser.add_argument("--parallel", type=int, default=None, help="fits in flight (adaptive)")
    args = parser.parse_args()
    root = Path(os.environ.get("HPCAF_PALLETS") or REPO.parent / "shared" / "data" / "pallets")
    folder = root / args.pallet
    cores = os.cpu_count() or 1
    parallel = args.parallel or 2 * cores
    extra = ["--initialPatches", str(args.initial)] if args.initial else []
    with local_harvester(cores) as env:
        pfit = ["harvester.client.pfit", "--pallet", str(folder), "--backend", "jax", "--wait"]
        t_full, out = run([*pfit, "--outDS", "user.bench.full"], env)
        _, text = run(["harvester.client.pbook", "results", str(task_id(out)), "--json"], env)
        full: dict[str, Any] = json.loads(text)
        t_adaptive, out = run(
            [
                *pfit,
                "--adaptive",
                "--nParallelEvaluation",
                str(parallel),
                *extra,
                "--outDS",
                "user.bench.adaptive",
            ],
            env,
        )
        _, text = run(["harvester.client.pbook", "results", str(task_id(out)), "--json"], env)
        adaptive: dict[str, Any] = json.loads(text)

    points = {n: e["metadata"]["values"] for n, e in full.items() if e.get("status") == "ok"}
    truth = {n: e["CLs_obs"] for n, e in full.items() if e.get("status") == "ok"}
    fitted = {n: e["CLs_obs"] for n, e in adaptive.items() if e.get("status") == "ok"}
    plan = AdaptivePlan(initial=len(fitted))
    predicted = decisions(points, fitted, plan)
    coords = normalise(points)
    boundary = [
        n
        for n in points
        if len({truth[o] < 0.05 for _, o in neighbours(coords, truth, n, 4)} | {truth[n] < 0.05})
        > 1
    ]
    wrong = [n for n in points if predicted[n] != (truth[n] < 0.05)]
    filled = {n: math.exp(predicted_log_cls(coords, fitted, n, plan.neighbours)) for n in points}
    c_full, c_adaptive = contour(points, truth), contour(points, filled)
    both = distances(c_adaptive, c_full) + distances(c_full, c_adaptive)
    both.sort()

    print(f"pallet {args.pallet}: {len(points)} patches; {cores} cores; jax backend")
    print(f"{'scan':28s} {'fits':>5s} {'wall [s]':>9s}")
    print(f"{'full pallet':28s} {len(truth):5d} {t_full:9.1f}")
    print(f"{'adaptive (pfit --adaptive)':28s} {len(fitted):5d} {t_adaptive:9.1f}")
    print(f"fits saved: {len(truth) - len(fitted)} ({1 - len(fitted) / len(truth):.0%})")
    print(
        f"decisions that differ: {len(wrong)} of {len(points)} patches; "
        f"{sum(n in boundary for n in wrong)} of the {len(boundary)} next to the contour"
    )
    if both:
        print(
            f"distance between the observed contours: median {both[len(both) // 2]:.1f}, "
            f"largest {both[-1]:.1f} (pallet units)"
        )
    dcls = max((abs(fitted[n] - truth[n]) for n in fitted), default=0.0)
    print(f"max |dCLs_obs| of the adaptive fits against the full pallet: {dcls:.1e}")
    home = Path(os.environ.get("HPCAF_HOME") or Path.home() / ".hpcaf")
    truth_pyhf = reference(folder, list(points), home, cores)
    refused = sorted(n for n, r in truth_pyhf.items() if "error" in r)
    if refused:
        print(f"pyhf itself cannot fit {len(refused)} patches that hpcaf fitted: {refused[:5]}")
    pyhf_cls = {n: r["CLs_obs"] for n, r in truth_pyhf.items() if "error" not in r}
    points = {n: v for n, v in points.items() if n in pyhf_cls}
    off_adaptive = max((abs(fitted[n] - pyhf_cls[n]) for n in fitted if n in pyhf_cls), default=0.0)
    off_full = max(abs(truth[n] - pyhf_cls[n]) for n in truth if n in pyhf_cls)
    against_pyhf = [n for n in points if predicted[n] != (pyhf_cls[n] < 0.05)]
    print(
        f"against pyhf run directly: max |dCLs_obs| {off_adaptive:.1e} (adaptive fits), "
        f"{off_full:.1e} (full run); decisions that differ: {len(against_pyhf)}"
    )


if __name__ == "__main__":
    main()
