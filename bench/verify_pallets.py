#!/usr/bin/env python3
"""Whole-pallet cross-check: every patch of every pallet through a running harvester,
against pyhf 0.7.6 run directly.

For each pallet under ``HPCAF_PALLETS`` (a folder with ``BkgOnly.json`` and
``patchset.json[.gz]``: 1Lbb, staus, sbottom RegionA/B/C):

* the reference: each patch fitted by pyhf alone (numpy backend,
  ``Workspace.model(patches=[patch])`` with normsys code4 and histosys code4p,
  ``hypotest(1.0, …, "qtilde", return_expected_set=True)``; no hpcaf code), on
  one process per core, cached under ``$HPCAF_HOME/verify-reference`` keyed by
  the pallet's content digest (slow: tens of minutes for all pallets on two
  cores the first time; never committed);
* hpcaf: the patches in a shuffled order, split into three tasks of one, two
  and many patches per job, all on one harvester whose pilots (and their warm
  fit workers) serve every task and pallet in turn; with jax on every patch and
  with numpy on a shuffled sample (``--numpy-sample``, 0 for every patch).

Prints, per pallet and backend, the patches checked, the largest difference in
CLs_obs and in the five CLs_exp, and the path each patch took (shared or
plain); exits 1 if any difference exceeds ``--tolerance`` (1e-4) or any patch
is missing or failed.

    python bench/verify_pallets.py [--pallets sbottom/RegionA,staus] [--seed 7]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import multiprocessing
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from local_harvester import REPO, local_harvester

MODIFIERS = {"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code4p"}}


def find_pallets(root: Path) -> list[Path]:
    return sorted(
        p.parent
        for p in root.rglob("BkgOnly.json")
        if (p.parent / "patchset.json.gz").exists() or (p.parent / "patchset.json").exists()
    )


def patchset_file(folder: Path) -> Path:
    gz = folder / "patchset.json.gz"
    return gz if gz.exists() else folder / "patchset.json"


def read(path: Path) -> Any:
    raw = path.read_bytes()
    return json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)


def pallet_digest(folder: Path) -> str:
    import pyhf

    h = hashlib.sha256()
    for path in (folder / "BkgOnly.json", patchset_file(folder)):
        h.update(hashlib.sha256(path.read_bytes()).digest())
    h.update(f"pyhf {pyhf.__version__} {MODIFIERS}".encode())
    return h.hexdigest()


_REFERENCE: dict[str, Any] = {}


def _reference_init(folder: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import pyhf

    pyhf.set_backend("numpy")
    path = Path(folder)
    _REFERENCE["workspace"] = pyhf.Workspace(read(path / "BkgOnly.json"))
    _REFERENCE["patches"] = {
        p["metadata"]["name"]: pyhf.patchset.Patch(p) for p in read(patchset_file(path))["patches"]
    }


def _reference_fit(name: str) -> tuple[str, dict[str, Any]]:
    """pyhf alone, as an analyst runs it; a patch pyhf cannot fit is recorded as such."""
    import pyhf

    workspace = _REFERENCE["workspace"]
    try:
        model = workspace.model(patches=[_REFERENCE["patches"][name]], modifier_settings=MODIFIERS)
        obs, exp = pyhf.infer.hypotest(
            1.0, workspace.data(model), model, test_stat="qtilde", return_expected_set=True
        )
    except Exception as exc:  # pyhf's own verdict on this patch: hpcaf must fail it too
        return name, {"error": f"{type(exc).__name__}: {exc}"}
    return name, {"CLs_obs": float(obs), "CLs_exp": [float(x) for x in exp]}


def reference(folder: Path, names: list[str], home: Path, cores: int) -> dict[str, Any]:
    """Reference CLs of ``names``, from the cache or fitted now (and cached as they come)."""
    cache = home / "verify-reference" / f"{pallet_digest(folder)}.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    known: dict[str, Any] = json.loads(cache.read_text()) if cache.exists() else {}
    todo = [n for n in names if n not in known]
    if todo:
        print(f"  reference: fitting {len(todo)} patches with pyhf alone ({cores} processes)")
        start = time.time()
        with multiprocessing.get_context("spawn").Pool(
            cores, initializer=_reference_init, initargs=(str(folder),)
        ) as pool:
            for done, (name, entry) in enumerate(pool.imap_unordered(_reference_fit, todo), 1):
                known[name] = entry
                if done % 10 == 0 or done == len(todo):
                    tmp = cache.with_suffix(".tmp")
                    tmp.write_text(json.dumps(known))
                    tmp.replace(cache)
        print(f"  reference: {len(todo)} fits in {time.time() - start:.0f}s, cached in {cache}")
    return {n: known[n] for n in names}


def split_mixed(names: list[str]) -> list[tuple[list[str], int]]:
    """Three tasks: one patch per job, two per job, and many per job."""
    third = max(1, len(names) // 3)
    many = max(3, (len(names) - 2 * third) // 3)
    return [(names[:third], 1), (names[third : 2 * third], 2), (names[2 * third :], many)]


def pfit_task(
    env: dict[str, str],
    folder: Path,
    names: list[str],
    per_job: int,
    backend: str,
    fitter: str = "scipy",
) -> int:
    args = [sys.executable, "-m", "harvester.client.pfit", "--pallet", str(folder)]
    for name in names:
        args += ["--patch", name]
    args += ["--backend", backend, "--patchesPerJob", str(per_job)]
    if backend == "jax":
        args += ["--fitter", fitter]
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pfit refused the task ({done.returncode}): {done.stderr.strip()}")
    return int(done.stdout.split("jediTaskID=")[1].split()[0])


def wait_and_collect(env: dict[str, str], task_ids: list[int]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    pbook = [sys.executable, "-m", "harvester.client.pbook"]
    for task_id in task_ids:
        subprocess.run([*pbook, "wait", str(task_id)], env=env, capture_output=True)
        out = subprocess.run(
            [*pbook, "results", str(task_id), "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        results.update(json.loads(out))
    return results


def compare(got: dict[str, Any], truth: dict[str, Any]) -> tuple[float, float, list[str], Counter]:
    worst_obs = worst_exp = 0.0
    bad: list[str] = []
    paths: Counter[str] = Counter()
    for name, ref in truth.items():
        entry = got.get(name)
        if "error" in ref:  # pyhf cannot fit it: neither may hpcaf
            if entry is None or entry.get("status") != "failed":
                bad.append(name)
            else:
                paths["failed as in pyhf"] += 1
            continue
        if entry is None or entry.get("status") != "ok":
            bad.append(name)
            continue
        got_values = [_number(entry["CLs_obs"]), *map(_number, entry["CLs_exp"])]
        ref_values = [_number(ref["CLs_obs"]), *map(_number, ref["CLs_exp"])]
        if any(math.isnan(a) != math.isnan(b) for a, b in zip(got_values, ref_values, strict=True)):
            bad.append(name)  # NaN on one side only
            continue
        if any(math.isnan(a) for a in ref_values):  # pyhf's CLb is 0 here: NaN on both sides
            paths["NaN as in pyhf"] += 1
            continue
        paths[entry.get("path", "?")] += 1
        worst_obs = max(worst_obs, abs(got_values[0] - ref_values[0]))
        worst_exp = max(
            worst_exp, max(abs(a - b) for a, b in zip(got_values[1:], ref_values[1:], strict=True))
        )
    return worst_obs, worst_exp, bad, paths


def recheck_unstable(
    folder: Path,
    got: dict[str, Any],
    truth: dict[str, Any],
    bad: list[str],
    backend: str,
    tolerance: float,
    paths: Counter[str],
) -> list[str]:
    """Patches whose reference CLs is NaN (pyhf's numpy backend divides 0 by 0 there; with
    several BLAS threads it may give a number instead) while hpcaf gave numbers: fitted
    again by pyhf alone on the backend hpcaf used, which must then agree within
    ``tolerance``. Returns the patches still wrong."""
    import pyhf

    still = []
    for name in bad:
        ref, entry = truth[name], got.get(name) or {}
        nan_reference = "error" not in ref and math.isnan(_number(ref["CLs_obs"]))
        if not nan_reference or entry.get("status") != "ok":
            still.append(name)
            continue
        pyhf.set_backend(backend)
        workspace = pyhf.Workspace(read(folder / "BkgOnly.json"))
        patch = next(
            p for p in read(patchset_file(folder))["patches"] if p["metadata"]["name"] == name
        )
        model = workspace.model(patches=[pyhf.patchset.Patch(patch)], modifier_settings=MODIFIERS)
        obs, exp = pyhf.infer.hypotest(
            1.0, workspace.data(model), model, test_stat="qtilde", return_expected_set=True
        )
        pyhf.set_backend("numpy")
        direct = [float(obs), *map(float, exp)]
        mine = [_number(entry["CLs_obs"]), *map(_number, entry["CLs_exp"])]
        worst = max(abs(a - b) for a, b in zip(mine, direct, strict=True))
        print(
            f"    {name}: NaN in the numpy reference; pyhf {backend} gives {direct[0]:.7g}, "
            f"hpcaf {mine[0]:.7g} (|d| {worst:.1e})"
        )
        if worst <= tolerance:
            paths[f"NaN in pyhf numpy, = pyhf {backend}"] += 1
        else:
            still.append(name)
    return still


def _number(value: float | None) -> float:
    """A CLs value; hpcaf's results store NaN as null (JSON has no NaN)."""
    return math.nan if value is None else float(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pallets", default="", help="comma-separated folders (default: all)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--numpy-sample", type=int, default=12, help="0: every patch")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument(
        "--fitter", default="scipy", choices=("scipy", "batched"), help="pfit --fitter (jax)"
    )
    args = parser.parse_args()
    root = Path(os.environ.get("HPCAF_PALLETS") or REPO.parent / "shared" / "data" / "pallets")
    home = Path(os.environ.get("HPCAF_HOME") or Path.home() / ".hpcaf")
    folders = [root / p for p in args.pallets.split(",")] if args.pallets else find_pallets(root)
    cores = os.cpu_count() or 1
    rng = random.Random(args.seed)
    rows = []
    failed = False
    with local_harvester(cores) as env:
        for folder in folders:
            label = str(folder.relative_to(root))
            names = [p["metadata"]["name"] for p in read(patchset_file(folder))["patches"]]
            print(f"{label}: {len(names)} patches")
            truth = reference(folder, names, home, cores)
            for backend in ("jax", "numpy"):
                order = rng.sample(names, len(names))
                if backend == "numpy" and args.numpy_sample:
                    order = order[: args.numpy_sample]
                start = time.time()
                tasks = [
                    pfit_task(env, folder, part, per_job, backend, args.fitter)
                    for part, per_job in split_mixed(order)
                    if part
                ]
                got = wait_and_collect(env, tasks)
                wall = time.time() - start
                worst_obs, worst_exp, bad, paths = compare(got, {n: truth[n] for n in order})
                bad = recheck_unstable(folder, got, truth, bad, backend, args.tolerance, paths)
                ok = not bad and max(worst_obs, worst_exp) <= args.tolerance
                failed |= not ok
                rows.append((label, backend, len(order), worst_obs, worst_exp, paths, bad, wall))
                print(
                    f"  {backend}: {len(order)} patches in {wall:.0f}s, max |dCLs_obs| "
                    f"{worst_obs:.1e}, max |dCLs_exp| {worst_exp:.1e}, paths {dict(paths)}"
                    + (f", missing or failed: {bad[:5]}" if bad else "")
                )
    print(
        f"\n{'pallet':24s} {'backend':7s} {'patches':>7s} {'max dCLs_obs':>12s} "
        f"{'max dCLs_exp':>12s}  paths"
    )
    for label, backend, n, obs, exp, paths, bad, _ in rows:
        flag = "" if not bad else f"  {len(bad)} missing/failed"
        print(
            f"{label:24s} {backend:7s} {n:7d} {obs:12.1e} {exp:12.1e}  "
            + ", ".join(f"{k} {v}" for k, v in sorted(paths.items()))
            + flag
        )
    print("OK: every value within tolerance" if not failed else "FAILED: see above")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
