"""hpcaf.Executor against Parsl's HighThroughputExecutor, side by side on this machine.

(a) no-op calls: the rate of ``N`` calls submitted at once, and the round trip
    of one call at a time on a warm worker (p50, p99 over ``--latency-calls``);
(b) the funcX demonstration's two functions over a pallet (workspace prepared
    once, one call per patch), written as the demonstration wrote them, with
    ``pfit``'s time on the same pallet beside them.

Both keep warm worker processes: Parsl HTEX with ``--workers`` workers of one
BLAS thread, hpcaf with one local pilot per worker slot and warm ``pyfunc``
workers in containers. Each figure is the median of ``--repeat`` runs.

    python bench/executor.py [--calls 2000] [--pallet staus/Region-combined]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from local_harvester import REPO, local_harvester
from parsl_peer import htex

sys.path.insert(0, str(REPO / "docs" / "examples"))

import pyhf_functions  # the demonstration's functions, as written there

PALLETS = Path(os.environ.get("HPCAF_PALLETS") or REPO.parent / "shared" / "data" / "pallets")


def noop() -> None:
    return None


# -- the two systems, behind one small interface ---------------------------------------


@contextmanager
def hpcaf_executor(workers: int) -> Iterator[Any]:
    import hpcaf

    with (
        local_harvester(workers) as env,
        hpcaf.Executor(
            site="ANALY_LOCAL",
            containerImage="pyhf",
            url=env["HPCAF_URL"],
            token=env["HPCAF_TOKEN"],
        ) as ex,
    ):
        yield ex


@contextmanager
def parsl_executor(workers: int) -> Iterator[Any]:
    # the workers import the demonstration's functions by name, as this process does
    with htex(workers, python_path=(REPO / "docs" / "examples",)) as ex:
        yield ex


def submitter(system: str, ex: Any) -> Callable[..., Any]:
    """``submit(fn, *args)`` for either system (Parsl's executor takes a resource spec)."""
    if system == "parsl":
        return lambda fn, *args: ex.submit(fn, {}, *args)
    return lambda fn, *args: ex.submit(fn, *args)


# -- (a) no-op calls -------------------------------------------------------------------


def noop_figures(system: str, ex: Any, calls: int, latency_calls: int) -> dict[str, float]:
    submit = submitter(system, ex)
    for _ in range(3):  # warm workers, and the executor's first-call checks, before the clock
        submit(noop).result(timeout=300)
    latencies = []
    singles = []
    for _ in range(latency_calls):
        sent = time.time()
        start = time.perf_counter()
        future = submit(noop)
        future.result(timeout=300)
        latencies.append(time.perf_counter() - start)
        singles.append((future, sent, time.time()))
    start = time.perf_counter()
    futures = [submit(noop) for _ in range(calls)]
    for future in futures:
        future.result(timeout=600)
    wall = time.perf_counter() - start
    latencies.sort()
    figures = {
        "rate": calls / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }
    if system == "hpcaf":
        figures.update(latency_phases(ex, singles))
    return figures


PHASES = (
    ("upload+submit", None, "task registered"),
    ("split+broker", "task registered", "job activated"),
    ("claim", "job activated", "job sent"),
    ("stage-in+run+report", "job sent", "job finished"),
    ("back to client", "job finished", None),
)
"""The steps of one call's round trip, between state changes its task and job recorded."""


def latency_phases(ex: Any, singles: list[tuple[Any, float, float]]) -> dict[str, float]:
    """Median milliseconds of each of ``PHASES`` over the single calls, from the state
    history of their tasks and jobs (``/tasks/{id}/history``, ``/jobs/{id}/history``)."""
    spans: dict[str, list[float]] = {name: [] for name, _, _ in PHASES}
    for future, sent, received in singles:
        marks = {None: sent}
        for entry in ex.http.get(f"/api/v1/tasks/{future.task_id}/history"):
            marks.setdefault(f"task {entry['to_status']}", _epoch(entry["at"]))
        (job,) = ex.http.get(f"/api/v1/tasks/{future.task_id}/jobs")
        for entry in ex.http.get(f"/api/v1/jobs/{job['id']}/history"):
            marks.setdefault(f"job {entry['to_status']}", _epoch(entry["at"]))
        for name, begin, end in PHASES:
            stop = received if end is None else marks[end]
            spans[name].append(stop - marks[begin])
    return {f"{name} (ms)": 1000 * statistics.median(v) for name, v in spans.items()}


def _epoch(at: str) -> float:
    moment = datetime.fromisoformat(at)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


# -- (b) the demonstration's functions over a pallet -----------------------------------


def pallet_wall(system: str, ex: Any, folder: Path, backend: str) -> float:
    submit = submitter(system, ex)
    bkg_only = pyhf_functions.read_json(folder / "BkgOnly.json")
    patches = pyhf_functions.read_json(folder / "patchset.json")["patches"]
    submit(noop).result(timeout=300)  # the workers are up before the clock starts
    start = time.perf_counter()
    workspace = submit(pyhf_functions.prepare_workspace, bkg_only, backend).result(timeout=600)
    futures = [
        submit(pyhf_functions.infer_hypotest, workspace, p["metadata"], [p["patch"]], backend)
        for p in patches
    ]
    for future in futures:
        future.result(timeout=1800)
    return time.perf_counter() - start


def pfit_wall(folder: Path, backend: str, workers: int) -> float:
    with local_harvester(workers) as env:
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "harvester.client.pfit",
                "--pallet",
                str(folder),
                "--backend",
                backend,
                "--outDS",
                "user.bench.pfit",
                "--wait",
            ],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return time.perf_counter() - start


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--latency-calls", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pallet", default="staus/Region-combined")
    parser.add_argument("--backend", default="numpy")
    parser.add_argument(
        "--pallet-repeat", type=int, default=None, help="runs of (b) (default: --repeat)"
    )
    parser.add_argument("--skip-pallet", action="store_true")
    args = parser.parse_args()
    folder = PALLETS / args.pallet
    pallet_repeat = args.repeat if args.pallet_repeat is None else args.pallet_repeat
    systems = {"hpcaf": hpcaf_executor, "parsl": parsl_executor}

    noop_rows: dict[str, list[dict[str, float]]] = {name: [] for name in systems}
    pallet_rows: dict[str, list[float]] = {name: [] for name in systems}
    for run in range(args.repeat):
        for name, make in systems.items():
            with make(args.workers) as ex:
                noop_rows[name].append(noop_figures(name, ex, args.calls, args.latency_calls))
                print(f"run {run + 1}, {name}: {noop_rows[name][-1]}", flush=True)
                if not args.skip_pallet and run < pallet_repeat:
                    pallet_rows[name].append(pallet_wall(name, ex, folder, args.backend))
                    print(f"run {run + 1}, {name}: {pallet_rows[name][-1]:.1f} s", flush=True)
    pfit = (
        []
        if args.skip_pallet
        else [pfit_wall(folder, args.backend, args.workers) for _ in range(pallet_repeat)]
    )

    print(f"\n(a) {args.calls} no-op calls, {args.workers} workers, median of {args.repeat} runs")
    print(f"{'':<28}{'calls/s':>10}{'p50 (ms)':>10}{'p99 (ms)':>10}")
    for name in systems:
        m = median_of(noop_rows[name])
        label = "hpcaf Executor" if name == "hpcaf" else "Parsl HTEX"
        print(f"{label:<28}{m['rate']:>10.0f}{m['p50_ms']:>10.1f}{m['p99_ms']:>10.1f}")
    phases = median_of(noop_rows["hpcaf"])
    print("\nhpcaf single call, by step (medians, from the state history):")
    for name, _, _ in PHASES:
        print(f"  {name:<26}{phases[f'{name} (ms)']:>8.1f} ms")
    if not args.skip_pallet:
        print(f"\n(b) {args.pallet}, the demonstration's functions, {args.backend}")
        for name in systems:
            label = "hpcaf Executor" if name == "hpcaf" else "Parsl HTEX (1 BLAS thread)"
            runs = ", ".join(f"{t:.1f}" for t in pallet_rows[name])
            print(f"{label:<28}{statistics.median(pallet_rows[name]):>8.1f} s   ({runs})")
        runs = ", ".join(f"{t:.1f}" for t in pfit)
        print(f"{'pfit --wait':<28}{statistics.median(pfit):>8.1f} s   ({runs})")


if __name__ == "__main__":
    main()
