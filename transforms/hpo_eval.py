#!/usr/bin/env python3
"""hpo_eval: evaluate one point of a hyperparameter scan.

Runs inside the image: standard library only, nothing from hpcaf. The point
is written to ``input.json`` in the work dir (panda-client's
``--evaluationInput``) unless the user's files have one, and the ``--exec``
template's ``%{name}`` placeholders are replaced by its values
(shell-quoted); the command runs under ``/bin/sh -c`` in the work dir, and
then ``metrics.json`` must hold a JSON object with a finite number under the
scan's metric name (``{"loss": 0.12}``). An evaluation written for
panda-client's phpo writes ``output.json`` instead: when the metric file is
the default one and missing, ``output.json`` is taken as it.
``jobReport.json`` records how it went; exit 65 (no retry) when the metric
file is missing or unreadable.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

EXIT_BAD_INPUT = 65
DEFAULT_METRICS_FILE = "metrics.json"
PANDA_OUTPUT_FILE = "output.json"
PLACEHOLDER = re.compile(r"%\{([A-Za-z_][A-Za-z0-9_]*)\}")


def render(template: str, point: dict) -> str:
    """The command for ``point``; an unknown placeholder is an error, not an empty string."""

    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in point:
            raise KeyError(name)
        item = point[name]
        if isinstance(item, bool):
            text = str(item).lower()
        elif isinstance(item, float):
            text = repr(item)
        else:
            text = str(item)
        return shlex.quote(text)

    return PLACEHOLDER.sub(value, template)


def check_metrics(path: str, metric: str) -> str | None:
    """None when ``path`` holds a finite ``metric``; otherwise what is wrong with it."""
    expected = f'{path} with {{"{metric}": <number>}} in the work dir'
    if not os.path.isfile(path):
        return f"the evaluation wrote no metric file: expected {expected}"
    try:
        with open(path) as fh:
            document = json.load(fh)
    except (OSError, ValueError) as exc:
        return f"{path} is not valid JSON ({exc}): expected {expected}"
    value = document.get(metric) if isinstance(document, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return f"{path} has no finite number under {metric!r}: expected {expected}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--job", default="job.json", help="the job description from the pilot")
    args = parser.parse_args(argv)
    with open(args.job) as fh:
        job = json.load(fh)
    transform_args = job.get("transform_args") or {}
    metric = transform_args.get("metric", "loss")
    metrics_file = transform_args.get("metricsFile", DEFAULT_METRICS_FILE)
    point = (job.get("job_parameters") or {}).get("point") or {}
    point_file = transform_args.get("inputFile", "input.json")
    if not os.path.exists(point_file):  # never over a file of the user's of that name
        with open(point_file, "w") as fh:
            json.dump(point, fh)
    started = time.time()
    message = ""
    try:
        command = render(job["exec"], point)
    except KeyError as exc:
        command, code = "", EXIT_BAD_INPUT
        message = f"--exec uses %{{{exc.args[0]}}} but the point has no such parameter"
    else:
        print(f"=== hpo_eval: point {json.dumps(point)}", flush=True)
        print(f"=== hpo_eval: {command}", flush=True)
        try:
            code = subprocess.call(["/bin/sh", "-c", command])
        except OSError as exc:
            code, message = 127, f"cannot start /bin/sh: {exc}"
        if code == 0:
            if (
                metrics_file == DEFAULT_METRICS_FILE
                and not os.path.exists(metrics_file)
                and os.path.isfile(PANDA_OUTPUT_FILE)
            ):  # staged out, and read by the harvester, as the metric file
                shutil.copyfile(PANDA_OUTPUT_FILE, metrics_file)
            problem = check_metrics(metrics_file, metric)
            if problem:
                code, message = EXIT_BAD_INPUT, problem
        elif not message:
            message = f"the evaluation command exited with code {code}"
    ended = time.time()
    report = {
        "exitCode": code,
        "exitMsg": message or "OK",
        "startTime": started,
        "endTime": ended,
        "wallTime": round(ended - started, 3),
        "point": point,
    }
    with open("jobReport.json", "w") as fh:
        json.dump(report, fh)
    if message:
        print(f"=== hpo_eval: {message}", file=sys.stderr, flush=True)
    print(f"=== hpo_eval: exit code {code} after {ended - started:.2f}s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
