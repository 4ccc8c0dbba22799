"""``pbook``: show, wait for, kill, retry tasks; read job logs; fetch results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from harvester.client.common import client, err, fail, optional, out
from harvester.client.http import ClientError, HarvesterClient
from harvester.client.task_options import (
    OptionError,
    memory_per_job,
    walltime_seconds,
)
from harvester.client.tasks import (
    TERMINAL,
    counts_text,
    draw_plot,
    print_fit_table,
    print_points,
    wait_for_task,
)
from protocol.states import TaskStatus

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Manage hpcaf tasks (as PanDA's pbook)."
)


@app.command()
def show(
    task_id: Annotated[int | None, typer.Argument(help="a task; omit to list your tasks")] = None,
    status: Annotated[str | None, typer.Option(help="filter the list by status")] = None,
    limit: Annotated[int, typer.Option(help="how many tasks to list")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show one task, or list your tasks newest first."""
    with client() as c:
        if task_id is not None:
            task = c.task(task_id)
            if as_json:
                print(json.dumps(task, indent=2))
                return
            _print_task(c, task)
            if (task.get("params") or {}).get("steering"):
                print_points(c.get(f"/api/v1/tasks/{task_id}/points"))
            return
        page = c.get("/api/v1/tasks", status=status, limit=limit)
    if as_json:
        print(json.dumps(page, indent=2))
        return
    table = Table("jediTaskID", "status", "name", "jobs", "created")
    for t in page["items"]:
        table.add_row(
            str(t["id"]),
            t["status"],
            t["name"],
            counts_text(t["job_counts"]),
            t["created_at"][:19],
        )
    out.print(table)
    out.print(f"{len(page['items'])} of {page['total']} tasks")


def _print_task(c: HarvesterClient, task: dict[str, Any]) -> None:
    table = Table(show_header=False)
    for key in (
        "id",
        "name",
        "owner",
        "status",
        "image",
        "image_digest",
        "out_ds",
        "n_jobs",
        "site",
        "architecture",
        "max_attempt",
        "created_at",
        "ended_at",
    ):
        table.add_row(key, str(task.get(key)))
    table.add_row("jobs", counts_text(task.get("job_counts", {})))
    if task.get("error_dialog"):
        table.add_row("error", str(task["error_dialog"]))
    out.print(table)
    waiting = [
        j
        for j in c.jobs(task["id"], all_attempts=False)
        if j["status"] in ("defined", "activated")
        and j.get("brokerage_message")
        and not j.get("queue")
    ]
    if waiting:
        out.print(
            f"[yellow]{len(waiting)} jobs wait:[/yellow] {escape(waiting[0]['brokerage_message'])}"
        )


@app.command()
def jobs(
    task_id: int,
    status: Annotated[str | None, typer.Option(help="only jobs in this status")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Every attempt of every job of a task."""
    with client() as c:
        rows = c.jobs(task_id, status=status)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(
        "PandaID", "job", "attempt", "status", "queue", "worker", "batch id", "exit", "error"
    )
    for j in rows:
        error = ""
        if j.get("pilot_error_code"):
            error = f"{j['pilot_error_code']}: {j.get('pilot_error_diag') or ''}"
        table.add_row(
            str(j["id"]),
            str(j["job_index"]),
            str(j["attempt_nr"]),
            j["status"],
            j.get("queue") or "-",
            str(j.get("worker_id") or "-"),
            j.get("batch_id") or "-",
            "" if j.get("exit_code") is None else str(j["exit_code"]),
            error[:80],
        )
    out.print(table)


@app.command()
def wait(
    task_id: int,
    timeout: Annotated[float, typer.Option(help="give up after this many seconds")] = 3600.0,
    interval: Annotated[float, typer.Option(help="seconds between polls")] = 2.0,
) -> None:
    """Wait for a task to end, with a progress bar; exit 0 only if it ends ``done``."""
    with client() as c:
        task = wait_for_task(c, task_id, timeout, interval)
    out.print(f"task {task_id} {task['status']}")
    if task["status"] != "done":
        raise typer.Exit(1)


TaskIds = Annotated[
    str, typer.Argument(help="task ids, comma-separated (1,2,3), or all", show_default=False)
]
ACTIVE = [state.value for state in TaskStatus if state.value not in TERMINAL]
"""Task states ``pbook kill all`` picks: every task that has not ended."""
RETRYABLE = ("finished", "failed", "aborted")
"""Task states ``pbook retry all`` picks (a finished task may have failed jobs)."""


def _my_tasks(c: HarvesterClient, statuses: list[str]) -> list[int]:
    """The ids of the caller's own tasks in one of ``statuses``, every page (an admin's
    ``all`` is still only the admin's own tasks)."""
    me = c.get("/api/v1/whoami")["user"]
    ids: list[int] = []
    while True:
        page = c.get("/api/v1/tasks", owner=me, status=statuses, limit=1000, offset=len(ids))
        ids += [task["id"] for task in page["items"]]
        if not page["items"] or len(ids) >= page["total"]:
            return ids


def _task_ids(value: str, c: HarvesterClient, all_statuses: list[str]) -> list[int]:
    """``1,2,3`` as panda-client's pbook takes it, or ``all`` (the caller's tasks in
    ``all_statuses``)."""
    if value.strip().lower() == "all":
        return _my_tasks(c, all_statuses)
    try:
        ids = [int(item) for item in value.split(",") if item.strip()]
    except ValueError:
        raise fail(f"{value!r}: give task ids as 1,2,3 or all") from None
    if not ids:
        raise fail("give task ids as 1,2,3 or all")
    return list(dict.fromkeys(ids))


def _each(ids: list[int], act: Any) -> None:
    """``act`` on every task; one refused does not stop the others; exit 2 if any was."""
    refused = 0
    for task_id in ids:
        try:
            task = act(task_id)
        except ClientError as exc:
            err.print(f"task {task_id}: {escape(str(exc))}")
            refused += 1
            continue
        out.print(f"task {task_id} {task['status']}")
    if not ids:
        out.print("no task to act on")
    if refused:
        raise typer.Exit(2)


@app.command()
def kill(tasks: TaskIds) -> None:
    """Kill tasks: pending jobs are cancelled and running payloads stopped. ``all``: every
    task of yours that has not ended."""
    with client() as c:
        ids = _task_ids(tasks, c, ACTIVE)
        _each(ids, lambda task_id: c.post(f"/api/v1/tasks/{task_id}/kill"))


@app.command()
def retry(
    tasks: TaskIds,
    memory: Annotated[
        int | None, typer.Option("--memory", help="new MB per core for the retried jobs")
    ] = None,
    walltime_h: Annotated[
        float | None, typer.Option("--maxWalltime", help="new hours per retried job")
    ] = None,
    site: Annotated[
        str | None, typer.Option("--site", help="new queue(s), comma-separated, or AUTO")
    ] = None,
) -> None:
    """Retry the failed and cancelled jobs of ended tasks, optionally with more memory, a
    longer walltime or other sites. ``all``: every ended task of yours."""
    try:
        walltime_s = walltime_seconds(walltime_h)
        if memory is not None:
            memory_per_job(memory, 1)  # checks the value; the cores are each task's
    except OptionError as exc:
        raise fail(str(exc)) from exc

    def changes(c: HarvesterClient, task_id: int) -> dict[str, Any] | None:
        body: dict[str, Any] = {"maxWalltime": walltime_s, "site": site}
        if memory is not None:
            cores = (c.task(task_id).get("params") or {}).get("coreCount") or 1
            body["ramCount"] = memory_per_job(memory, int(cores))
        body = {k: v for k, v in body.items() if v is not None}
        return body or None

    with client() as c:
        ids = _task_ids(tasks, c, list(RETRYABLE))
        _each(ids, lambda task_id: c.post(f"/api/v1/tasks/{task_id}/retry", changes(c, task_id)))


@app.command()
def share(
    task_id: int,
    users: Annotated[list[str], typer.Argument(help="user names")],
    revoke: Annotated[
        bool, typer.Option("--revoke", help="stop sharing with these users instead")
    ] = False,
) -> None:
    """Let other users read a task's logs, outputs and results (or stop, with --revoke)."""
    change = {"remove": users} if revoke else {"add": users}
    with client() as c:
        task = c.request("PATCH", f"/api/v1/tasks/{task_id}/readers", json=change).json()
    readers = ", ".join(task["readers"]) or "nobody"
    out.print(f"task {task_id} is shared with {readers}", highlight=False)


@app.command()
def logs(job_id: int) -> None:
    """Print the payload log of one job attempt (PandaID)."""
    with client() as c:
        text = c.request("GET", f"/api/v1/jobs/{job_id}/log").text
    print(text, end="" if text.endswith("\n") else "\n")


@app.command()
def results(
    task_id: int,
    outdir: Annotated[
        Path | None, typer.Option("-o", "--outdir", help="download the output files here")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="fit tasks: draw the exclusion plot to this PNG")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON")] = False,
) -> None:
    """The task's results (fit tasks: CLs per patch; scans: the points); -o downloads files."""
    with client() as c:
        document = c.get(f"/api/v1/tasks/{task_id}/results")
        if document.get("kind") == "hpo_eval":
            summary = c.get(f"/api/v1/tasks/{task_id}/points")
            if outdir is not None:
                outdir.mkdir(parents=True, exist_ok=True)
                for f in document["files"]:
                    c.download(f["sha256"], outdir / f["name"])
            _scan_results(summary, plot, as_json=as_json)
            return
        if outdir is not None:
            outdir.mkdir(parents=True, exist_ok=True)
            for f in document["files"]:
                c.download(f["sha256"], outdir / f["name"])
        params = c.task(task_id).get("params") or {} if plot is not None else {}
    fit = document.get("results")
    if as_json:
        print(json.dumps(fit if fit is not None else document, indent=2))
    elif fit is not None:
        print_fit_table(fit)
    else:
        table = Table("file", "size", "sha256")
        for f in document["files"]:
            table.add_row(f["name"], str(f["size"]), f["sha256"][:16])
        out.print(table)
        if not document["files"]:
            err.print(f"task {task_id} ({document['status']}) has no output files yet")
    if outdir is not None:
        out.print(f"{len(document['files'])} files downloaded to {outdir}")
    if plot is not None:
        if fit is None:
            raise fail(f"task {task_id} is not a fit task; nothing to plot")
        draw_plot(fit, plot, params, task_id)


def _scan_results(summary: dict[str, Any], plot: Path | None, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print_points(summary)
    if plot is not None:
        optional("matplotlib", "fit", "--plot")
        from harvester.plotting import plot_scan

        try:
            n = plot_scan(summary, plot)
        except ValueError as exc:
            raise fail(str(exc)) from exc
        out.print(f"scan plot: {plot} ({n} evaluated points)")


def run() -> None:
    app()


if __name__ == "__main__":
    run()
