#!/usr/bin/env python3
"""Fit-campaign benchmark: sequential pyhf, Parsl's HighThroughputExecutor, and hpcaf.

  (a) sequential pyhf (numpy + scipy) in one process: the demonstration's
      single-node setup, on a sample of patches, extrapolated (and labelled so);
  (b) the demonstration's per-patch function through Parsl's
      HighThroughputExecutor, one worker per core, one BLAS thread per worker,
      on a sample of patches, extrapolated (needs ``pip install parsl``);
  (c) hpcaf end to end (pfit → results) with one pilot per core, numpy and jax,
      on the whole pallet.

Prints wall time, fits per second, the speed-ups of (c) over (a) and (b), the
largest |ΔCLs| between (c) and (a), and where (c)'s time went step by step
(``campaign_steps.py``). The runs of (c) share one site compilation cache
(``compileCache``), as a site's campaigns do: run 1 is a new site's first
campaign and fills it (printed on its own), the later runs are a site whose pilots
compiled these models before. ``--compile-cache DIR`` keeps that cache across
commands; ``--fresh-cache`` gives every run an empty one. Starts its own harvester on
a free loopback port with a temporary HPCAF_HOME; images come from HPCAF_IMAGE_CACHE.

    python bench/fit_campaign.py --pallet staus/Region-combined [--sample 6] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from campaign_steps import campaign_steps, median_steps, print_steps
from local_harvester import REPO, local_harvester, new_home
from parsl_peer import htex

CACHE_PREFIX = "hpcaf-bench-compilations-"
MODIFIERS = {"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code4p"}}


def load(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    workspace = json.loads((folder / "BkgOnly.json").read_text())
    name = "patchset.json.gz" if (folder / "patchset.json.gz").exists() else "patchset.json"
    opener = gzip.open if name.endswith(".gz") else open
    with opener(folder / name, "rt") as fh:
        return workspace, json.load(fh)


def fit_patch(workspace: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """The demonstration's per-patch function: patch, build, hypotest (numpy backend)."""
    import time as _time

    import pyhf

    start = _time.time()
    ws = pyhf.Workspace(workspace)
    model = ws.model(
        patches=[pyhf.patchset.Patch(patch)],
        modifier_settings={
            "normsys": {"interpcode": "code4"},
            "histosys": {"interpcode": "code4p"},
        },
    )
    obs, exp = pyhf.infer.hypotest(
        1.0, ws.data(model), model, test_stat="qtilde", return_expected_set=True
    )
    return {
        "name": patch["metadata"]["name"],
        "CLs_obs": float(obs),
        "CLs_exp": [float(x) for x in exp],
        "Fit-Time": _time.time() - start,
    }


def sequential(workspace: dict[str, Any], patches: list[dict[str, Any]]) -> tuple[float, dict]:
    import pyhf

    pyhf.set_backend("numpy")
    start = time.time()
    results = {p["metadata"]["name"]: fit_patch(workspace, p) for p in patches}
    return time.time() - start, results


def parsl_htex(workspace: dict[str, Any], patches: list[dict[str, Any]], workers: int) -> float:
    import parsl

    with htex(workers):
        app = parsl.python_app(fit_patch)
        warm = app(workspace, patches[0])  # the endpoint is up before the clock starts
        warm.result()
        start = time.time()
        futures = [app(workspace, p) for p in patches]
        for f in futures:
            f.result()
        return time.time() - start


def hpcaf(
    folder: Path,
    backend: str,
    slots: int,
    compile_cache: Path,
    fitter: str = "scipy",
    patches_per_job: int | None = None,
) -> tuple[float, dict[str, Any], tuple[list[tuple[str, float]], dict[str, float]]]:
    """pfit → results through a fresh harvester with one local pilot per core; the wall
    time, the results and the campaign's steps. ``patches_per_job``: pfit's
    ``--patchesPerJob`` (default: pfit's own split)."""
    from harvester.client.http import HarvesterClient

    with local_harvester(slots, compile_cache) as cenv:
        start = time.time()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "harvester.client.pfit",
                "--pallet",
                str(folder),
                "--backend",
                backend,
                *(["--fitter", fitter] if backend == "jax" else []),
                *(["--patchesPerJob", str(patches_per_job)] if patches_per_job else []),
                "--outDS",
                f"user.bench.{backend}",
                "--wait",
            ],
            env=cenv,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        returned = time.time()
        wall = returned - start
        with HarvesterClient(cenv["HPCAF_URL"], cenv["HPCAF_TOKEN"]) as client:
            steps = campaign_steps(client, 1, start, returned)
        out = subprocess.run(
            [sys.executable, "-m", "harvester.client.pbook", "results", "1", "--json"],
            env=cenv,
            check=True,
            capture_output=True,
            text=True,
        )
        return wall, json.loads(out.stdout), steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pallet", default="staus/Region-combined", help="folder under HPCAF_PALLETS"
    )
    parser.add_argument("--sample", type=int, default=6, help="patches for (a) and (b)")
    parser.add_argument("--skip-parsl", action="store_true")
    parser.add_argument("--backends", default="numpy,jax")
    parser.add_argument("--repeat", type=int, default=1, help="runs of (c); the median is shown")
    parser.add_argument(
        "--fitter", default="scipy", choices=("scipy", "batched"), help="pfit --fitter (jax)"
    )
    parser.add_argument(
        "--patches-per-job",
        type=int,
        default=None,
        help="pfit --patchesPerJob (default: its own split)",
    )
    caches = parser.add_mutually_exclusive_group()
    caches.add_argument(
        "--compile-cache",
        type=Path,
        default=None,
        help="the site compilation cache, kept across commands "
        "(default: a new one for this command's runs)",
    )
    caches.add_argument(
        "--fresh-cache",
        action="store_true",
        help="an empty site compilation cache for every run",
    )
    args = parser.parse_args()
    root = Path(os.environ.get("HPCAF_PALLETS") or REPO.parent / "shared" / "data" / "pallets")
    folder = root / args.pallet
    workspace, patchset = load(folder)
    patches = patchset["patches"]
    n = len(patches)
    cores = os.cpu_count() or 1
    step = max(1, n // args.sample)
    sample = patches[::step][: args.sample]
    print(f"pallet {args.pallet}: {n} patches; machine: {cores} cores")

    rows: list[tuple[str, float, bool]] = []
    t_seq, seq = sequential(workspace, sample)
    t_a = t_seq / len(sample) * n
    rows.append(("(a) sequential pyhf numpy", t_a, True))
    t_b = None
    if not args.skip_parsl:
        t_par = parsl_htex(workspace, sample * max(1, cores), cores)
        t_b = t_par / (len(sample) * max(1, cores)) * n
        rows.append((f"(b) Parsl HTEX, {cores} workers x 1 thread", t_b, True))
    deltas = {}
    for backend in args.backends.split(","):
        walls = []
        walls_steps: list[list[tuple[str, float]]] = []
        summed_runs: list[dict[str, float]] = []
        site_cache = None if args.fresh_cache else args.compile_cache or new_home(CACHE_PREFIX)
        for _ in range(args.repeat):
            cache = site_cache or new_home(CACHE_PREFIX)
            wall, results, (steps, summed) = hpcaf(
                folder, backend, cores, cache, args.fitter, args.patches_per_job
            )
            walls.append(wall)
            walls_steps.append(steps)
            summed_runs.append(summed)
        wall = statistics.median(walls)
        if args.repeat > 1:
            shown = ", ".join(f"{w:.1f}" for w in walls)
            print(f"(c) {backend}: {shown} s; median {wall:.1f} s")
            firsts = [run["first_results_s"] for run in summed_runs]
            shown = ", ".join(f"{f:.1f}" for f in firsts)
            median = statistics.median(firsts)
            print(f"(c) {backend}, first CLs back: {shown} s; median {median:.1f} s")
            if not args.fresh_cache and args.compile_cache is None:
                print(
                    f"(c) {backend}, run 1 (a new site: its compilation cache empty): "
                    f"{walls[0]:.1f} s, first CLs {firsts[0]:.1f} s"
                )
        summed_median = {
            key: statistics.median(run.get(key, 0.0) for run in summed_runs)
            for key in summed_runs[0]
        }
        print_steps(backend, median_steps(walls_steps), summed_median, wall)
        rows.append((f"(c) hpcaf pfit end to end, {backend}", wall, False))
        deltas[backend] = max(abs(results[k]["CLs_obs"] - v["CLs_obs"]) for k, v in seq.items())
        failed = sum(1 for e in results.values() if e.get("status") != "ok")
        if failed:
            print(f"  warning: {failed} patches failed with {backend}")

    print(f"\n{'setup':45s} {'wall [s]':>9s} {'fits/s':>7s} {'c vs a':>7s} {'c vs b':>7s}")
    for label, wall, extrapolated in rows:
        mark = "*" if extrapolated else " "
        line = f"{label:45s} {wall:8.1f}{mark} {n / wall:7.2f}"
        if label.startswith("(c)"):
            line += f" {t_a / wall:6.1f}x"
            line += f" {t_b / wall:6.1f}x" if t_b else "       -"
        print(line)
    print(f"* extrapolated from {len(sample)} sampled patches (x{cores} for Parsl) to {n}")
    for backend, delta in deltas.items():
        print(f"max |dCLs_obs| (c, {backend}) vs (a) on the sample: {delta:.2e}")


if __name__ == "__main__":
    main()
