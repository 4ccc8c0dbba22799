"""What the user CLIs share: error output and the client factory."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import typer
from rich.console import Console

from harvester.client.http import ClientError, HarvesterClient

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)

T = TypeVar("T")


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


@contextmanager
def client() -> Iterator[HarvesterClient]:
    """A client from HPCAF_URL/HPCAF_TOKEN; any ClientError becomes a message and exit 2."""
    try:
        with HarvesterClient() as c:
            yield c
    except ClientError as exc:
        raise fail(str(exc)) from exc


def split_list(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def guarded(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except ClientError as exc:
        raise fail(str(exc)) from exc
