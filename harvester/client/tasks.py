"""A submitted task as the user CLIs follow it: waiting for it to end, and showing
its fit results, its scan points or its exclusion plot.

``pbook`` is a CLI of its own; ``pfit --wait`` and ``phpo --wait`` show the
same things, so they import this module rather than pbook.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from harvester.client.common import err, fail, optional, out
from harvester.client.http import HarvesterClient
from protocol.states import TASK_TERMINAL

TERMINAL = frozenset(state.value for state in TASK_TERMINAL)
STATE_ORDER = [
    "defined",
    "activated",
    "sent",
    "starting",
    "running",
    "finished",
    "failed",
    "cancelled",
    "closed",
]


def counts_text(counts: dict[str, int]) -> str:
    return " ".join(f"{s}={counts[s]}" for s in STATE_ORDER if counts.get(s))


def wait_for_task(
    c: HarvesterClient, task_id: int, timeout: float, interval: float = 2.0
) -> dict[str, Any]:
    """Follow a task with a progress bar until it ends; print the errors of failed jobs.

    Between looks the client long-polls the task's endings (``wait_s``): the harvester
    answers as soon as a job or the task ends, so the last result is seen at once,
    not up to ``interval`` seconds later.
    """
    deadline = time.monotonic() + timeout
    task = c.task(task_id)
    cursor = 0
    progress = Progress(
        TextColumn("task {task.fields[tid]} [bold]{task.fields[state]}[/bold]"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} jobs"),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    with progress:
        bar = progress.add_task(
            "wait", total=task["n_jobs"], tid=task_id, state=task["status"], counts=""
        )
        while True:
            task = c.task(task_id)
            counts = task.get("job_counts", {})
            ended = sum(counts.get(s, 0) for s in ("finished", "failed", "cancelled"))
            progress.update(
                bar,
                completed=ended,
                total=task["n_jobs"],
                state=task["status"],
                counts=counts_text(counts),
            )
            if task["status"] in TERMINAL:
                break
            if time.monotonic() > deadline:
                progress.stop()
                for why in {
                    j["brokerage_message"]
                    for j in c.jobs(task_id, all_attempts=False)
                    if j["status"] == "activated" and not j.get("queue")
                }:
                    err.print(f"jobs wait: {why}")
                raise fail(f"task {task_id} still {task['status']} after {timeout:.0f}s", 1)
            cursor = wait_for_endings(c, task_id, cursor, interval)
    failed = [j for j in c.jobs(task_id, all_attempts=False) if j["status"] == "failed"]
    for j in failed[:20]:
        err.print(
            f"job {j['id']} (#{j['job_index']}) failed: {j.get('pilot_error_code')} "
            f"{j.get('pilot_error_diag') or ''}"
        )
    return task


def wait_for_endings(c: HarvesterClient, task_id: int, cursor: int, wait_s: float) -> int:
    """Wait up to ``wait_s`` for a job of the task (or the task) to end; the new cursor."""
    answer = c.get(f"/api/v1/tasks/{task_id}/endings", after=cursor, wait_s=wait_s)
    return int(answer["cursor"])


def _value_text(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def print_points(summary: dict[str, Any]) -> None:
    """The points of a scan, best marked, and the best so far."""
    points = summary["points"]
    metric = summary.get("metric") or "metric"
    names = list(points[0]["params"]) if points else []
    best = summary.get("best")
    table = Table("point", *names, metric, "status", "PandaID", "error")
    for p in points:
        marker = " *" if best and p["index"] == best["index"] else ""
        table.add_row(
            f"{p['index']}{marker}",
            *[_value_text(p["params"].get(n)) for n in names],
            "" if p["metric"] is None else f"{p['metric']:.6g}",
            p["status"],
            str(p["job_id"]),
            (p.get("error") or "")[:60],
        )
    out.print(table)
    n_done = sum(1 for p in points if p["metric"] is not None)
    line = f"{n_done} of {len(points)} points evaluated ({summary['maxPoints']} planned)"
    if best:
        values = ", ".join(f"{k}={_value_text(v)}" for k, v in best["params"].items())
        line += f"; best {metric} = {best['metric']:.6g} at point {best['index']} ({values})"
    out.print(line)


def print_fit_table(fit: dict[str, Any]) -> None:
    table = Table("patch", "CLs_obs", "CLs_exp (-2 to +2 sigma)", "fit time", "status")
    for name, entry in fit.items():
        if entry.get("status") == "ok":
            exp = " ".join(f"{v:.4f}" for v in entry["CLs_exp"])
            table.add_row(name, f"{entry['CLs_obs']:.6f}", exp, f"{entry['Fit-Time']:.2f}s", "ok")
        else:
            table.add_row(name, "", "", "", f"{entry.get('status')} {entry.get('message') or ''}")
    out.print(table)
    n_ok = sum(1 for e in fit.values() if e.get("status") == "ok")
    out.print(f"{n_ok}/{len(fit)} patches fitted")


def draw_plot(fit: dict[str, Any], path: Path, params: dict[str, Any], task_id: int) -> None:
    optional("matplotlib", "fit", "--plot")
    from harvester.plotting import plot_exclusion

    labels = params.get("transformArgs", {}).get("labels") or ["m1", "m2"]
    try:
        contours = plot_exclusion(
            fit,
            path,
            title=f"task {task_id}: {params.get('taskName') or ''}",
            labels=(str(labels[0]), str(labels[1])),
        )
    except ValueError as exc:
        raise fail(str(exc)) from exc
    out.print(
        f"exclusion plot: {path} ({contours.points} points, "
        f"{len(contours.observed)} observed and {len(contours.expected)} expected contour "
        "lines)"
    )
