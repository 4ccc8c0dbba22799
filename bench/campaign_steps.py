"""Where a fit campaign's time went: the steps of ``bench/fit_campaign.py``'s breakdown.

Read after the campaign from what the harvester recorded (the state history of
the task and its jobs) and what each job's log ends with (the transform's
``hpcaf-timings`` line, ``transforms/pyhf_fit.py``). Two views:

* **wall**, the critical path to the first job's results: from the client's
  start to the task's registration, splitting and brokerage, the wait for a
  pilot, the container and worker start, and the first job's own phases;
* **summed**, each phase added over all jobs (seconds of one core each): what
  the campaign spent on model building against compilation against fits.
"""

from __future__ import annotations

import json
import statistics
from datetime import UTC, datetime
from typing import Any

from transforms.pyhf_fit import TIMINGS_PREFIX  # the transform's own (stdlib imports only)

JOB_PHASES = (
    ("container and worker start", "container_s"),
    ("process start-up", "startup_s"),
    ("backend import", "backend_s"),
    ("inputs read", "inputs_s"),
    ("model build and templates", "prepare_s"),
    ("first fit per structure (compiles)", "first_fits_s"),
    ("other fits", "fits_s"),
    ("stage-out and report", "report_s"),
)


def epoch(at: str) -> float:
    moment = datetime.fromisoformat(at)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def timings_of(log: str) -> dict[str, float] | None:
    """The last timing line of a job's log (``None``: the job printed none)."""
    for line in reversed(log.splitlines()):
        if line.startswith(TIMINGS_PREFIX):
            values: dict[str, float] = json.loads(line[len(TIMINGS_PREFIX) :])
            return values
    return None


def first_mark(history: list[dict[str, Any]], status: str) -> float | None:
    for entry in history:
        if entry["to_status"] == status:
            return epoch(entry["at"])
    return None


def campaign_steps(
    client: Any, task_id: int, started: float, returned: float
) -> tuple[list[tuple[str, float]], dict[str, float]]:
    """(wall-clock steps in order, per-phase seconds summed over jobs) of one campaign.

    ``started``/``returned``: when the client was started and when it came back
    with every result (epoch seconds, this machine's clock as the harvester's).
    """
    task_history = client.get(f"/api/v1/tasks/{task_id}/history")
    registered = first_mark(task_history, "registered") or started
    ready = first_mark(task_history, "ready") or registered
    done = first_mark(task_history, "done") or returned
    jobs = []
    for job in client.get(f"/api/v1/tasks/{task_id}/jobs"):
        history = client.get(f"/api/v1/jobs/{job['id']}/history")
        log = client.request("GET", f"/api/v1/jobs/{job['id']}/log").text
        jobs.append((history, timings_of(log)))
    summed = {key: 0.0 for _, key in JOB_PHASES}
    firsts: list[tuple[float, dict[str, float]]] = []
    for history, timings in jobs:
        sent = first_mark(history, "sent")
        finished = first_mark(history, "finished")
        if timings is None or sent is None or finished is None:
            continue
        phases = dict(timings)
        phases["container_s"] = max(0.0, timings["started_at"] - timings["startup_s"] - sent)
        phases["report_s"] = max(0.0, finished - timings["ended_at"])
        for _, key in JOB_PHASES:
            summed[key] += phases.get(key, 0.0)
        firsts.append((sent, phases))
    activated = [first_mark(h, "activated") for h, _ in jobs]
    first_activated = min((a for a in activated if a is not None), default=ready)
    wall = [
        ("client: validation and upload", registered - started),
        ("task creation and splitting", ready - registered),
        ("brokerage", max(0.0, first_activated - ready)),
    ]
    if firsts:
        sent, phases = min(firsts, key=lambda item: item[0])
        wall.append(("dispatch wait (pilot start included)", sent - first_activated))
        wall += [(f"first job: {name}", phases.get(key, 0.0)) for name, key in JOB_PHASES]
    wall.append(("results back to the client", returned - done))
    summed["jobs"] = float(len(firsts))
    ends = [first_mark(history, "finished") for history, _ in jobs]
    summed["first_results_s"] = min((e for e in ends if e is not None), default=done) - started
    return wall, summed


def median_steps(runs: list[list[tuple[str, float]]]) -> list[tuple[str, float]]:
    """Per step, the median over runs (steps matched by name, in the first run's order)."""
    names = [name for name, _ in runs[0]]
    return [(name, statistics.median(dict(run).get(name, 0.0) for run in runs)) for name in names]


def print_steps(
    backend: str, wall: list[tuple[str, float]], summed: dict[str, float], total: float
) -> None:
    print(f"\n(c) {backend}, by step (medians of the runs; {total:.1f} s end to end)")
    for name, seconds in wall:
        print(f"  {name:52s} {seconds:7.2f} s")
    first = summed.get("first_results_s")
    if first is not None:
        print(f"  {'first CLs back (a job finished), after pfit started':52s} {first:7.2f} s")
    jobs = int(summed.get("jobs", 0))
    print(f"  summed over the {jobs} jobs (core-seconds):")
    for name, key in JOB_PHASES:
        print(f"    {name:50s} {summed.get(key, 0.0):7.2f} s")
