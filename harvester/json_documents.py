"""JSON the harvester did not write itself: files payloads write (metrics, fit results).

Such a document is kept only if it can be served back, by the same rule as a
request value (:func:`protocol.documents.check_tree`: no NUL, no NaN or
infinity, no deeper nesting than :data:`protocol.documents.MAX_NESTING`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from protocol.documents import check_tree

MAX_DOCUMENT_BYTES = 1 << 20
"""A payload-written file larger than this (``metrics.json``, fit results) is not read."""


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
