"""Fits per second per core: patches of one structure fitted together inside JAX
(``pfit --fitter batched``) against one at a time with pyhf's scipy fits (the default).

Both ways run on the shared compilation of :mod:`pyhf_shared`, in this process pinned
to one core, on the same patches; each is timed warm (after its compilation, which is
printed apart), ``--repeat`` times, and the medians are printed with the largest
difference between the two ways' CLs. The slow truth for the batched fits (pyhf run
directly) is ``tests/test_fit_truth.py``.

    HPCAF_PALLETS=../shared/data/pallets python bench/batched_fits.py --patches 16 --repeat 3
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "transforms"))

PALLETS = {"staus": "staus/Region-combined", "1Lbb": "1Lbb"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pallet", choices=sorted(PALLETS), action="append")
    parser.add_argument("--patches", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    root = Path(os.environ.get("HPCAF_PALLETS") or REPO.parent / "shared" / "data" / "pallets")
    for name in args.pallet or ["staus", "1Lbb"]:
        measure(name, root / PALLETS[name], args.patches, args.repeat)


def measure(name: str, folder: Path, count: int, repeat: int) -> None:
    import pyhf
    import pyhf_batched
    import pyhf_fit

    pyhf_fit.configure_backend("jax")
    background = json.loads((folder / "BkgOnly.json").read_text())
    raw = json.loads(gzip.decompress((folder / "patchset.json.gz").read_bytes()))
    patches = [pyhf.patchset.Patch(p) for p in raw["patches"][:count]]
    workspace = pyhf.Workspace(background, validate=False)
    shared = pyhf_fit._prepare_shared(background, workspace, patches)
    assert shared is not None and all(slot is not None for slot in shared.slots)
    structure = shared.slots[0][0]
    slots = [slot for slot in shared.slots if slot is not None and slot[0] is structure]

    def one_at_a_time() -> list[float]:
        values = []
        for structure_, leaves, data in slots:
            with shared.models.fitting(structure_, leaves) as model:
                values.append(pyhf_fit.fit_one(model, data, 1.0, "qtilde")[0])
        return values

    def together() -> list[float | None]:
        tests = pyhf_batched.hypotests(
            structure, [s[1] for s in slots], [s[2] for s in slots], 1.0, "qtilde"
        )
        return [t.cls_obs if t is not None else None for t in tests]

    for label, way in (("one at a time (scipy)", one_at_a_time), ("together (batched)", together)):
        start = time.perf_counter()
        values = way()
        first = time.perf_counter() - start
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            way()
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        print(
            f"{name}, {len(slots)} patches, {label}: first call {first:.1f} s (compiles), "
            f"warm {median:.2f} s median of {', '.join(f'{t:.2f}' for t in times)}: "
            f"{len(slots) / median:.2f} fits/s per core",
            flush=True,
        )
        if way is one_at_a_time:
            reference = values
        else:
            converged = [(a, b) for a, b in zip(values, reference, strict=True) if a is not None]
            worst = max(abs(a - b) for a, b in converged)
            print(
                f"{name}: {len(converged)} of {len(slots)} converged together; largest "
                f"|dCLs_obs| against one at a time {worst:.1e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
