"""``pcontainer``: submit a containerized task, with panda-client's option names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from harvester.client.common import (
    build_params,
    check_submission,
    client,
    err,
    fail,
    load_json,
    split_list,
)
from harvester.client.sandbox import SANDBOX_NAME, SandboxError, pack_work_dir
from harvester.client.task_options import (
    OptionError,
    memory_per_job,
    task_parameters,
    walltime_seconds,
)

app = typer.Typer(add_completion=False, help="Submit a containerized task to hpcaf.")


@app.command()
def main(
    containerImage: Annotated[
        str | None,
        typer.Option("--containerImage", help="image name in the image cache (or docker://…)"),
    ] = None,
    exec_: Annotated[
        str | None, typer.Option("--exec", help="command to run in the container")
    ] = None,
    outDS: Annotated[str | None, typer.Option("--outDS", help="output dataset user.NAME.X")] = None,
    outputs: Annotated[
        str | None, typer.Option("--outputs", help="comma list of output files")
    ] = None,
    site: Annotated[
        str | None,
        typer.Option("--site", help="queue(s) to run on, comma-separated (default AUTO)"),
    ] = None,
    excludedSite: Annotated[
        str | None, typer.Option("--excludedSite", help="comma list of queues to avoid")
    ] = None,
    architecture: Annotated[
        str | None, typer.Option("--architecture", help="e.g. nvidia-gpu or '#&nvidia'")
    ] = None,
    nJobs: Annotated[int | None, typer.Option("--nJobs", help="number of jobs")] = None,
    cores: Annotated[
        int | None, typer.Option("--nCore", help="cores per job (per node, with --nNodes)")
    ] = None,
    nodes: Annotated[
        int | None,
        typer.Option(
            "--nNodes",
            help="nodes per job: one gang-scheduled allocation, --nCore ranks on each node",
        ),
    ] = None,
    memory: Annotated[
        int | None, typer.Option("--memory", help="MB per core (panda-client's unit)")
    ] = None,
    walltime_h: Annotated[
        float | None, typer.Option("--maxWalltime", help="hours per job (panda-client's unit)")
    ] = None,
    priority: Annotated[
        int | None, typer.Option("--priority", help="900-1100, default 1000")
    ] = None,
    maxAttempt: Annotated[int | None, typer.Option("--maxAttempt", help="attempts per job")] = None,
    taskName: Annotated[str | None, typer.Option("--taskName")] = None,
    loadJson: Annotated[
        Path | None, typer.Option("--loadJson", help="read task parameters from JSON")
    ] = None,
    dumpJson: Annotated[
        Path | None, typer.Option("--dumpJson", help="write the task parameters to JSON")
    ] = None,
    noSubmit: Annotated[
        bool, typer.Option("--noSubmit", help="check everything with the harvester; submit nothing")
    ] = False,
    workDir: Annotated[
        Path,
        typer.Option("--workDir", help="the folder shipped to every job's /srv/workDir"),
    ] = Path("."),
    extFile: Annotated[
        str | None,
        typer.Option("--extFile", help="comma list of patterns: ship these large or ROOT files"),
    ] = None,
    excludeFile: Annotated[
        str | None,
        typer.Option("--excludeFile", help="comma list of patterns: never ship these files"),
    ] = None,
    noBuild: Annotated[
        bool,
        typer.Option("--noBuild", help="no build step (hpcaf builds nothing; kept for prun users)"),
    ] = False,
) -> None:
    """Submit a task whose jobs run ``--exec`` in ``--containerImage``; prints jediTaskID=<id>."""
    loaded = load_json(loadJson) if loadJson else {}
    try:
        memory_mb = memory_per_job(memory, cores or loaded.get("coreCount"))
        walltime_s = walltime_seconds(walltime_h)
    except OptionError as exc:
        raise fail(str(exc)) from exc
    params = build_params(
        task_parameters(
            containerImage=containerImage,
            exec=exec_,
            outDS=outDS,
            outputs=split_list(outputs) if outputs is not None else None,
            site=site,
            excludedSite=split_list(excludedSite) if excludedSite is not None else None,
            architecture=architecture,
            nJobs=nJobs,
            cores=cores,
            nodes=nodes,
            memory_mb=memory_mb,
            walltime_s=walltime_s,
            priority=priority,
            maxAttempt=maxAttempt,
            taskName=taskName,
        ),
        loaded,
    )
    for required in ("containerImage", "outDS"):
        if not params.get(required):
            raise fail(f"--{required} is required")
    if not str(params.get("exec", "")).strip():
        raise fail("--exec is required and must not be empty")
    if params.get("nJobs") is not None and int(params["nJobs"]) < 1:
        raise fail("--nJobs must be at least 1")
    if params.get("nNodes") is not None and int(params["nNodes"]) < 1:
        raise fail("--nNodes must be at least 1")
    if dumpJson:
        dumpJson.write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
        err.print(f"task parameters written to {dumpJson}")
    try:
        sandbox = pack_work_dir(
            workDir, ext_files=split_list(extFile), exclude_files=split_list(excludeFile)
        )
    except SandboxError as exc:
        raise fail(str(exc)) from exc
    for skipped in sandbox.left_out:
        err.print(f"not shipped: {skipped}")
    if noSubmit:
        check_submission(params)
        return
    with client() as c:
        if sandbox.files:
            stored = c.upload_bytes(sandbox.data, SANDBOX_NAME)
            params["sandbox"] = {"name": SANDBOX_NAME, "sha256": stored["sha256"]}
        reply = c.submit_task(params)
    print(f"jediTaskID={reply['jediTaskID']}")


def run() -> None:
    app()


if __name__ == "__main__":
    run()
