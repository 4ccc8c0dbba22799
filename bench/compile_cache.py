"""What a site's compilation cache buys a job, and what a cache warmed by other work buys.

One job of staus patches (``--patches``, from the middle of the pallet) is run in a
new warm-worker process (``pyhf_fit.py --serve``, as the pilot starts it), pinned to
one core, with JAX's persistent cache in a folder that is, in turn:

- ``empty``: a new site's first job;
- ``same job``: filled by the same job before (a site whose pilots fitted these
  patches, in the same split, before);
- ``other staus job``: filled by a job of other staus patches (another aligned
  structure of the same pallet);
- ``1Lbb job``: filled by a job of 1Lbb patches (another pallet), which is what
  warming the cache when the image is imported, with models of no particular site,
  could at best give.

For each, the job's first fit (trace and compile) and preparation (aligned models and
the JAX template) are printed as medians of ``--repeat`` runs, each in a new process
and a new cache folder.

    HPCAF_PALLETS=../shared/data/pallets python bench/compile_cache.py --repeat 3
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

from campaign_steps import timings_of
from local_harvester import REPO


class Pallet:
    def __init__(self, folder: Path) -> None:
        self.workspace = folder / "BkgOnly.json"
        self.patchset = folder / "patchset.json.gz"
        raw = json.loads(gzip.decompress(self.patchset.read_bytes()))
        self.names = [p["metadata"]["name"] for p in raw["patches"]]


class Finished(NamedTuple):
    """A job's ``hpcaf-timings`` line, its ``payload.log`` and its ``results.json``."""

    timings: dict[str, Any]
    log: str
    results: dict[str, Any]


def run_job(
    cache: Path, pallet: Pallet, names: list[str], workdir: Path, *, prelude: str = ""
) -> Finished:
    """One job in a new warm-worker process on one core.

    ``prelude``: Python run in the worker after ``pyhf_fit`` is imported and before it
    serves (``bench/worker_overheads.py`` changes the transform's ways there).
    """
    workdir.mkdir(parents=True)
    job = {
        "transform_args": {
            "workspace": str(pallet.workspace),
            "patchset": str(pallet.patchset),
            "backend": "jax",
            "poi_value": 1.0,
            "test_stat": "qtilde",
        },
        "job_parameters": {"patches": names},
    }
    (workdir / "job.json").write_text(json.dumps(job))
    code = "\n".join(
        [
            f"import sys; sys.path.insert(0, {str(REPO / 'transforms')!r})",
            "import pyhf_fit",
            prelude,
            "sys.exit(pyhf_fit.serve())",
        ]
    )
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "OMP_NUM_THREADS": "1",
        "JAX_COMPILATION_CACHE_DIR": str(cache),
    }
    core = str(min(os.sched_getaffinity(0)))
    subprocess.run(
        ["taskset", "-c", core, sys.executable, "-c", code],
        input=json.dumps({"workdir": str(workdir)}) + "\n",
        text=True,
        capture_output=True,
        env=env,
        check=True,
    )
    log = (workdir / "payload.log").read_text()
    timings = timings_of(log)
    if timings is None:
        raise SystemExit(f"the job printed no timings:\n{log[-2000:]}")
    return Finished(timings, log, json.loads((workdir / "results.json").read_text()))


def job_in_a_new_cache(
    pallet: Pallet, names: list[str], warm_with: tuple[Pallet, list[str]] | None, prelude: str = ""
) -> Finished:
    """The job in a new cache folder, filled first by the job ``warm_with`` (``None``: left
    empty), each job in a worker of its own."""
    scratch = Path(tempfile.mkdtemp(prefix="hpcaf-bench-cc-"))
    try:
        cache = scratch / "cache"
        cache.mkdir()
        if warm_with is not None:
            run_job(cache, *warm_with, scratch / "warm", prelude=prelude)
        return run_job(cache, pallet, names, scratch / "measured", prelude=prelude)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patches", type=int, default=14)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = Path(os.environ.get("HPCAF_PALLETS") or REPO.parent / "shared" / "data" / "pallets")
    staus, lbb = Pallet(root / "staus" / "Region-combined"), Pallet(root / "1Lbb")
    middle = len(staus.names) // 2
    measured = staus.names[middle : middle + args.patches]
    other = staus.names[: args.patches]
    warmers: dict[str, tuple[Pallet, list[str]] | None] = {
        "empty": None,
        "same job": (staus, measured),
        "other staus job": (staus, other),
        "1Lbb job": (lbb, lbb.names[: max(1, args.patches // 4)]),
    }
    print(f"staus job of {len(measured)} patches, one core, medians of {args.repeat} runs")
    header = f"{'cache filled by':18s} {'first fit [s]':>14s} {'prepare [s]':>12s}"
    print(f"{header}  runs of the first fit")
    for label, warmer in warmers.items():
        firsts, prepares = [], []
        for _ in range(args.repeat):
            timings = job_in_a_new_cache(staus, measured, warmer).timings
            firsts.append(timings["first_fits_s"])
            prepares.append(timings["prepare_s"])
        shown = ", ".join(f"{f:.2f}" for f in firsts)
        print(
            f"{label:18s} {statistics.median(firsts):14.2f} "
            f"{statistics.median(prepares):12.2f}  {shown}",
            flush=True,
        )


if __name__ == "__main__":
    main()
