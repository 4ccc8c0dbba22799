"""JSON the harvester did not write itself: request values and payload-written files.

Such a document is kept only if it can be served back: no NUL in its text
(PostgreSQL cannot store one), no NaN or infinity (JSON has none; replies
refuse them) and no deeper nesting than :data:`MAX_NESTING` (a deeper one is
stored fine and then fails every reply that includes it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MAX_NESTING = 32
"""Lists and objects nest at most this deep."""

MAX_DOCUMENT_BYTES = 1 << 20
"""A payload-written file larger than this (``metrics.json``, fit results) is not read."""


def check_tree(value: Any) -> Any:
    """``value`` itself; a ValueError if it nests too deep, holds a NaN or an
    infinity, or a string in it holds a NUL.

    Iterative, so a deeply nested value cannot exhaust the stack.
    """
    stack = [(value, 1)]  # (item, how many lists and objects it is inside, itself included)
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise ValueError("contains a NUL character (\\x00), which no text field may hold")
            continue
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("holds NaN or an infinity, which JSON cannot carry")
        if isinstance(item, dict | list | tuple) and depth > MAX_NESTING:
            raise ValueError(f"nests deeper than {MAX_NESTING} levels")
        if isinstance(item, dict):
            stack.extend((key, depth) for key in item)
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((child, depth + 1) for child in item)
    return value


def load_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in a payload-written file; a ValueError saying what is wrong with it.

    NaN and infinities (which Python's json writes) are read as null: a fit that
    produced one keeps the rest of its results.
    """
    size = path.stat().st_size
    if size > MAX_DOCUMENT_BYTES:
        raise ValueError(f"{what} is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        document = json.loads(path.read_bytes(), parse_constant=_null, parse_float=_finite_or_null)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError(f"{what} must hold a JSON object")
    try:
        check_tree(document)
    except ValueError as exc:
        raise ValueError(f"{what} {exc}") from exc
    return document


def _null(_name: str) -> None:
    return None


def _finite_or_null(text: str) -> float | None:
    number = float(text)
    return number if math.isfinite(number) else None
