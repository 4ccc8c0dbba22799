"""Listings as every CLI (the admin's and the users') prints them: a table for a person, JSON
for a script.

On a terminal a table is drawn to the terminal's width. Piped or redirected it is never
cut to fit an imaginary 80 columns: every cell is printed whole on its row, so that
``harvester queue list | grep ANALY_`` sees whole queue names. ``--json`` prints the rows
as a JSON list of objects, with values as they are (numbers stay numbers).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

UNBOUNDED_WIDTH = 100_000
"""The width of a console that is not a terminal: wide enough that nothing is cut."""


def stdout_console() -> Console:
    """A console on stdout: the terminal's width, or unbounded when not on a terminal."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else UNBOUNDED_WIDTH)


def print_listing(
    columns: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    *,
    as_json: bool,
    console: Console | None = None,
) -> None:
    """``rows`` (one mapping per row, keyed by column) as a table or as JSON."""
    if as_json:
        print(json.dumps([{c: row.get(c) for c in columns} for row in rows], default=str))
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    (console or stdout_console()).print(table)
