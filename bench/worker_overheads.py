"""What a new worker spends outside pyhf's own work, and what the fit transform spares.

One job (``--patches`` patches from the middle of a pallet) in a new warm-worker
process pinned to one core, as in ``bench/compile_cache.py``, with JAX's persistent
cache filled by the same job before (a site that fitted it: what is left is not
compilation). Four ways, each ``--repeat`` times in a new process and cache folder:

- ``as JAX and Python do``: a new MLIR context per lowering, and Python's cyclic
  garbage collector running as it does by itself;
- ``contexts reused``: JAX's lowerings in reused MLIR contexts
  (``transforms/jax_contexts.py``);
- ``collector paused``: the collector paused while the job runs
  (``pyhf_fit.collector_paused``), what a job leaves collected between jobs;
- ``both``: what the transform does.

Printed per pallet and way, as medians: the whole job (process start-up included),
its preparation (aligned models and the JAX template), its first fit, its other fits,
the time Python's garbage collector took in the process (its imports included), its
full collections, and the programs JAX lowered; and the largest difference in CLs from the first way
(they must be equal).

    HPCAF_PALLETS=../shared/data/pallets python bench/worker_overheads.py --repeat 3
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
from pathlib import Path

from compile_cache import Pallet, job_in_a_new_cache
from local_harvester import REPO

GC_MARK = "bench-gc-seconds"
MEASURE_GC = f"""
import gc, time
_gc = [0.0, 0.0, 0]
def _gc_timed(phase, info):
    if phase == "start":
        _gc[1] = time.perf_counter()
    else:
        _gc[0] += time.perf_counter() - _gc[1]
        _gc[2] += info["generation"] == 2
gc.callbacks.append(_gc_timed)
from jax._src.interpreters import mlir, pxla
_lowered = [0]
_lower = mlir.lower_jaxpr_to_module
def _lower_counted(*args, **kwargs):
    _lowered[0] += 1
    return _lower(*args, **kwargs)
pxla.mlir.lower_jaxpr_to_module = _lower_counted
_job_main = pyhf_fit.main
def _main_measured(argv=None):
    try:
        return _job_main(argv)
    finally:
        print("{GC_MARK}", _gc[0], _gc[2], _lowered[0], flush=True)
pyhf_fit.main = _main_measured
"""
OWN_CONTEXTS = "import jax_contexts; jax_contexts.reuse_ir_contexts = lambda: False"
COLLECTOR_RUNS = "import contextlib; pyhf_fit.collector_paused = contextlib.nullcontext"
WAYS = {
    "as JAX and Python do": [OWN_CONTEXTS, COLLECTOR_RUNS],
    "contexts reused": [COLLECTOR_RUNS],
    "collector paused": [OWN_CONTEXTS],
    "both": [],
}


def one_job(pallet: Pallet, names: list[str], changes: list[str]) -> tuple[dict[str, float], dict]:
    """The job's timings (with the collector's and the lowerings' counts) and results, in a
    site cache that the same job filled before."""
    prelude = "\n".join([MEASURE_GC, *changes])
    finished = job_in_a_new_cache(pallet, names, (pallet, names), prelude)
    timings = finished.timings
    found = re.search(rf"^{GC_MARK} (\S+) (\d+) (\d+)$", finished.log, re.MULTILINE)
    timings["gc_s"] = float(found.group(1)) if found else float("nan")
    timings["full_collections"] = float(found.group(2)) if found else float("nan")
    timings["lowered"] = float(found.group(3)) if found else float("nan")
    return timings, finished.results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patches", type=int, default=14)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pallets", nargs="+", default=["staus/Region-combined", "1Lbb"])
    args = parser.parse_args()
    root = Path(os.environ.get("HPCAF_PALLETS") or REPO.parent / "shared" / "data" / "pallets")
    print(
        f"one job of {args.patches} patches, one core, a warm site cache, medians of "
        f"{args.repeat} runs"
    )
    print(
        f"{'pallet':22s} {'way':22s} {'job [s]':>8s} {'prepare':>8s} {'1st fit':>8s} "
        f"{'fits':>6s} {'collector':>9s} {'full':>5s} {'lowered':>7s} {'|ΔCLs|':>8s}  "
        "runs of the job"
    )
    for name in args.pallets:
        pallet = Pallet(root / name)
        middle = len(pallet.names) // 2
        names = pallet.names[middle : middle + args.patches]
        first: dict | None = None
        for way, changes in WAYS.items():
            runs: dict[str, list[float]] = {
                "job": [],
                "prepare": [],
                "first": [],
                "fits": [],
                "gc": [],
                "full": [],
                "lowered": [],
            }
            difference = 0.0
            for _ in range(args.repeat):
                timings, results = one_job(pallet, names, changes)
                runs["job"].append(
                    timings["startup_s"] + timings["ended_at"] - timings["started_at"]
                )
                runs["prepare"].append(timings["prepare_s"])
                runs["first"].append(timings["first_fits_s"])
                runs["fits"].append(timings["fits_s"])
                runs["gc"].append(timings["gc_s"])
                runs["full"].append(timings["full_collections"])
                runs["lowered"].append(timings["lowered"])
                first = first or results
                difference = max(
                    [difference] + [abs(results[n]["CLs_obs"] - first[n]["CLs_obs"]) for n in names]
                )
            median = {k: statistics.median(v) for k, v in runs.items()}
            shown = ", ".join(f"{v:.2f}" for v in runs["job"])
            print(
                f"{name:22s} {way:22s} {median['job']:8.2f} {median['prepare']:8.2f} "
                f"{median['first']:8.2f} {median['fits']:6.2f} {median['gc']:9.2f} "
                f"{median['full']:5.0f} {median['lowered']:7.0f} {difference:8.1e}  {shown}",
                flush=True,
            )


if __name__ == "__main__":
    main()
