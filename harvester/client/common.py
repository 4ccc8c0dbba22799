"""What the user CLIs share: error output, the client factory, optional parts, --loadJson
and the --noSubmit dry run."""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from harvester.client.http import ClientError, HarvesterClient
from harvester.terminal import stdout_console

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = stdout_console()

T = TypeVar("T")


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` as an error (plain text: brackets in it are not markup)."""
    err.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)


def optional(module: str, extra: str, needed_for: str) -> ModuleType:
    """An optional dependency, imported when first needed; when it is not installed, a
    one-line message naming the extra that brings it (never a traceback)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module.split(".")[0]:
            raise  # the package is there but broken: its own traceback says more
        raise fail(
            f"{needed_for} needs {module}, which is not installed: "
            f"pip install 'hpcaf[{extra}]' (from a clone: pip install -e '.[{extra}]')"
        ) from exc


@contextmanager
def client() -> Iterator[HarvesterClient]:
    """A client from HPCAF_URL/HPCAF_TOKEN; any ClientError becomes a message and exit 2."""
    try:
        with HarvesterClient() as c:
            yield c
    except ClientError as exc:
        raise fail(str(exc)) from exc


def build_params(options: dict[str, Any], loaded: dict[str, Any]) -> dict[str, Any]:
    """Task parameters: the --loadJson dict, overridden by options given on the command line."""
    params = dict(loaded)
    for key, value in options.items():
        if value is not None:
            params[key] = value
    return params


def load_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise fail(f"--loadJson {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise fail(f"--loadJson {path}: not valid JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise fail(f"--loadJson {path}: expected a JSON object of task parameters")
    return document


def split_list(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def guarded(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except ClientError as exc:
        raise fail(str(exc)) from exc


def check_submission(params: dict[str, Any], out_ds_kind: str = "") -> None:
    """``--noSubmit``: the harvester runs every check of a submission on ``params`` and
    stores nothing; a refusal is the same message and exit code as a real submission.
    Without a harvester to ask (no URL or token), only the client's checks ran: said.
    ``out_ds_kind``: a CLI that names the output dataset itself when it is not given
    (``user.<you>.<kind>.<time>``) has it checked under that name."""
    try:
        with HarvesterClient() as c:
            if params.get("outDS") is None and out_ds_kind:
                me = c.get("/api/v1/whoami")["user"]
                params = {**params, "outDS": f"user.{me}.{out_ds_kind}.{int(time.time())}"}
            checked = c.post("/api/v1/tasks/check", params)
    except ClientError as exc:
        if exc.status_code is None:
            err.print(f"not checked by a harvester ({exc}); only the client's own checks ran")
            return
        raise fail(str(exc)) from exc
    err.print(
        f"dry run: the harvester would accept this task ({checked['nJobs']} jobs, "
        f"site {checked['site'] or 'AUTO'}); nothing was submitted"
    )
