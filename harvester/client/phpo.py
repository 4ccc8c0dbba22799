"""``phpo``: submit a hyperparameter scan as one task, as ATLAS ``phpo`` does.

Each point of the scan is one job that runs ``--exec`` with the point's values
in place of its ``%{name}`` placeholders (and in ``input.json``) and leaves
``metrics.json`` (or panda-client's ``output.json``) in its work dir.
panda-client's option names work too (``--evaluationContainer``,
``--evaluationExec``, ``--searchSpaceFile``, and a ``--loadJson`` file of them).
The harvester keeps at most ``--nParallelEvaluation`` points in flight and
proposes new ones (grid, random or Optuna's TPE) as results come back, until
``--maxPoints`` are done or the task is killed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from harvester.client.common import (
    build_params,
    check_submission,
    client,
    err,
    fail,
    load_json,
    out,
    split_list,
)
from harvester.client.task_options import (
    OptionError,
    memory_per_job,
    task_parameters,
    walltime_seconds,
)
from harvester.client.tasks import print_points, wait_for_task
from harvester.errors import InvalidRequest
from harvester.scans.algorithms import ALGORITHMS
from harvester.scans.space import check_placeholders, parse_search_space

app = typer.Typer(add_completion=False, help="Submit a hyperparameter scan to hpcaf.")

T = TypeVar("T")


def _given(option: T | None, loaded: Any, default: T) -> T:
    """The command line's value, else the one from --loadJson, else the default."""
    if option is not None:
        return option
    return loaded if loaded is not None else default


METRICS_FILE = "metrics.json"

PANDA_OPTION_NAMES = {
    "evaluationContainer": "containerImage",
    "evaluationExec": "exec",
    "outDS": "outDS",
    "site": "site",
    "architecture": "architecture",
}
"""panda-client phpo option names (as its ``--loadJson`` files hold them) → task parameters."""
PANDA_STEERING_NAMES = ("maxPoints", "nParallelEvaluation")
PANDA_IGNORED = frozenset(
    {
        "evaluationInput",
        "evaluationOutput",
        "loadJson",
        "dumpJson",
        "noSubmit",
        "verbose",
        "python3",
    }
)


def from_panda_options(loaded: dict[str, Any]) -> dict[str, Any]:
    """A ``--loadJson`` document written for panda-client's phpo (its option names:
    ``evaluationContainer``, ``evaluationExec``, ``searchSpaceFile``, ``maxPoints``, …)
    as hpcaf's task parameters; other documents unchanged. Options hpcaf does not
    have are named in a warning and left out, as panda-client does with unknown ones."""
    if not ({"evaluationExec", "evaluationContainer", "searchSpaceFile"} & set(loaded)):
        return loaded
    params: dict[str, Any] = {}
    steering: dict[str, Any] = {}
    ignored = []
    for key, value in loaded.items():
        if key in PANDA_OPTION_NAMES:
            params[PANDA_OPTION_NAMES[key]] = value
        elif key in PANDA_STEERING_NAMES:
            steering[key] = value
        elif key == "searchSpaceFile":
            steering["searchSpace"] = read_search_space(str(value))
        elif key not in PANDA_IGNORED and value not in (None, False):
            ignored.append(key)
    if ignored:
        err.print(
            f"--loadJson: panda-client options hpcaf does not use, ignored: {', '.join(ignored)}"
        )
    if steering:
        params["steering"] = steering
    return params


def read_search_space(value: str) -> Any:
    """A search space from a JSON file, or inline JSON text."""
    text = value
    if not value.lstrip().startswith(("{", "[")):
        try:
            text = Path(value).read_text()
        except OSError as exc:
            raise fail(f"--searchSpace {value}: {exc.strerror or exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"--searchSpace {value}: not valid JSON ({exc})") from exc


@app.command()
def main(
    containerImage: Annotated[
        str | None,
        typer.Option(
            "--containerImage", "--evaluationContainer", help="image that runs the evaluations"
        ),
    ] = None,
    exec_: Annotated[
        str | None,
        typer.Option(
            "--exec",
            "--evaluationExec",
            help="evaluation command, with %{name} placeholders or reading input.json",
        ),
    ] = None,
    searchSpace: Annotated[
        str | None,
        typer.Option(
            "--searchSpace", "--searchSpaceFile", help="search space: a JSON file or JSON text"
        ),
    ] = None,
    maxPoints: Annotated[
        int | None, typer.Option("--maxPoints", help="points to evaluate [default: 10]")
    ] = None,
    nParallelEvaluation: Annotated[
        int | None,
        typer.Option("--nParallelEvaluation", help="evaluations running at once [default: 1]"),
    ] = None,
    algorithm: Annotated[
        str | None, typer.Option("--algorithm", help="grid, random or tpe (Optuna) [default: tpe]")
    ] = None,
    minimize: Annotated[
        bool | None,
        typer.Option(
            "--minimize/--maximize", help="optimise the metric down or up [default: down]"
        ),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric", help=f"the key of {METRICS_FILE} that is optimised [default: loss]"
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="seed of the proposals")] = None,
    outDS: Annotated[str | None, typer.Option("--outDS", help="output dataset user.NAME.X")] = None,
    outputs: Annotated[
        str | None, typer.Option("--outputs", help=f"more output files besides {METRICS_FILE}")
    ] = None,
    inputFiles: Annotated[
        str | None,
        typer.Option("--inputFiles", help="local files put in every evaluation's work dir"),
    ] = None,
    site: Annotated[
        str | None, typer.Option("--site", help="queue(s) to run on, comma-separated")
    ] = None,
    architecture: Annotated[
        str | None, typer.Option("--architecture", help="e.g. nvidia-gpu")
    ] = None,
    cores: Annotated[int | None, typer.Option("--nCore", help="cores per evaluation")] = None,
    memory: Annotated[
        int | None, typer.Option("--memory", help="MB per core (panda-client's unit)")
    ] = None,
    walltime_h: Annotated[
        float | None,
        typer.Option("--maxWalltime", help="hours per evaluation (panda-client's unit)"),
    ] = None,
    maxAttempt: Annotated[
        int | None, typer.Option("--maxAttempt", help="attempts per point [default: 2]")
    ] = None,
    taskName: Annotated[str | None, typer.Option("--taskName")] = None,
    loadJson: Annotated[
        Path | None,
        typer.Option("--loadJson", help="task parameters from JSON (as --dumpJson writes)"),
    ] = None,
    dumpJson: Annotated[
        Path | None, typer.Option("--dumpJson", help="write the task parameters to JSON")
    ] = None,
    noSubmit: Annotated[bool, typer.Option("--noSubmit", help="do not submit")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="wait and print the points")] = False,
    timeout: Annotated[
        float, typer.Option(help="--wait gives up after this many seconds")
    ] = 7200.0,
) -> None:
    """Submit a scan; prints jediTaskID=<id>."""
    loaded = from_panda_options(load_json(loadJson)) if loadJson else {}
    steering_loaded = loaded.get("steering")
    steered: dict[str, Any] = steering_loaded if isinstance(steering_loaded, dict) else {}
    containerImage = containerImage or loaded.get("containerImage")
    exec_ = exec_ if exec_ is not None else loaded.get("exec")
    maxPoints = _given(maxPoints, steered.get("maxPoints"), 10)
    nParallelEvaluation = _given(nParallelEvaluation, steered.get("nParallelEvaluation"), 1)
    algorithm = _given(algorithm, steered.get("algorithm"), "tpe")
    minimize = _given(minimize, steered.get("minimize"), True)
    metric = _given(metric, steered.get("metric"), "loss")
    seed = _given(seed, steered.get("seed"), None)
    maxAttempt = _given(maxAttempt, loaded.get("maxAttempt"), 2)
    if not containerImage:
        raise fail("--containerImage is required (or in --loadJson)")
    if exec_ is None:
        raise fail("--exec is required (or in --loadJson)")
    if searchSpace is None and "searchSpace" not in steered:
        raise fail("--searchSpace is required (or a steering.searchSpace in --loadJson)")
    if maxPoints < 1:
        raise fail("--maxPoints must be at least 1")
    if nParallelEvaluation < 1:
        raise fail("--nParallelEvaluation must be at least 1")
    if algorithm not in ALGORITHMS:
        raise fail(f"--algorithm must be one of {', '.join(ALGORITHMS)}")
    if not exec_.strip():
        raise fail("--exec must not be empty")
    try:
        memory_mb = memory_per_job(memory, cores or loaded.get("coreCount"))
        walltime_s = walltime_seconds(walltime_h)
    except OptionError as exc:
        raise fail(str(exc)) from exc
    document = read_search_space(searchSpace) if searchSpace is not None else steered["searchSpace"]
    try:
        space = parse_search_space(document)
        check_placeholders(exec_, space)
        n_points = min(maxPoints, space.grid_size()) if algorithm == "grid" else maxPoints
    except InvalidRequest as exc:
        raise fail(str(exc)) from exc
    files = [Path(p) for p in split_list(inputFiles)]
    for path in files:
        if not path.is_file():
            raise fail(f"--inputFiles {path}: no such file")
    steering: dict[str, Any] = {
        "kind": "hpo",
        "algorithm": algorithm,
        "searchSpace": document,
        "maxPoints": maxPoints,
        "nParallelEvaluation": nParallelEvaluation,
        "minimize": minimize,
        "metric": metric,
    }
    if seed is not None:
        steering["seed"] = seed
    params: dict[str, Any] = {
        "transform": "hpo_eval",
        "steering": steering,
        **build_params(
            task_parameters(
                taskName=taskName
                or loaded.get("taskName")
                or f"phpo {algorithm} ({n_points} points)",
                containerImage=containerImage,
                exec=exec_,
                outDS=outDS,
                outputs=(
                    [METRICS_FILE, *[o for o in split_list(outputs) if o != METRICS_FILE]]
                    if outputs is not None or "outputs" not in loaded
                    else None
                ),
                site=site,
                architecture=architecture,
                cores=cores,
                memory_mb=memory_mb,
                walltime_s=walltime_s,
                maxAttempt=maxAttempt,
            ),
            {k: v for k, v in loaded.items() if k not in ("steering", "transform", "inputs")},
        ),
    }
    params.setdefault("outDS", None)
    if dumpJson:
        dumpJson.write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
        err.print(f"task parameters written to {dumpJson}")
    if noSubmit:  # the input files were found; they are uploaded only when submitting
        check_submission(params, out_ds_kind="phpo")
        return
    with client() as c:
        if params["outDS"] is None:
            params["outDS"] = f"user.{c.get('/api/v1/whoami')['user']}.phpo.{int(time.time())}"
        params["inputs"] = [
            {"name": path.name, "sha256": c.upload(path, path.name)["sha256"]} for path in files
        ]
        reply = c.submit_task({k: v for k, v in params.items() if v is not None})
        task_id = reply["jediTaskID"]
        print(f"jediTaskID={task_id}", flush=True)
        err.print(
            f"{algorithm} scan of {', '.join(space.names)}: {n_points} points, "
            f"{nParallelEvaluation} at a time, {'minimising' if minimize else 'maximising'} "
            f"{metric}"
        )
        if not wait:
            return
        task = wait_for_task(c, task_id, timeout)
        summary = c.get(f"/api/v1/tasks/{task_id}/points")
    print_points(summary)
    out.print(f"task {task_id} {task['status']}")
    if task["status"] != "done":
        raise typer.Exit(1)


def run() -> None:
    app()


if __name__ == "__main__":
    run()
