"""JSON values a caller sends: what every request value must be to be kept.

A value is kept only if it can be served back: no NUL in its text (PostgreSQL
cannot store one), no NaN or infinity (JSON has none; replies refuse them) and
no deeper nesting than :data:`MAX_NESTING` (a deeper one is stored fine and
then fails every reply that includes it). The harvester checks the JSON files
payloads write the same way (:mod:`harvester.json_documents`).
"""

from __future__ import annotations

import math
from typing import Any

MAX_NESTING = 32
"""Lists and objects nest at most this deep."""


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
