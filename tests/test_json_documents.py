"""JSON the harvester did not write: kept only if it can be stored and served back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harvester.json_documents import MAX_DOCUMENT_BYTES, load_object
from protocol.documents import MAX_NESTING, check_tree


def nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth):
        value = [value]
    return value


def test_a_payload_document_keeps_its_numbers_and_reads_nan_as_null(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text('{"CLs_obs": 0.04, "band": [NaN, Infinity, -Infinity, 1e999, 2]}')
    document = load_object(path, "results.json")
    assert document == {"CLs_obs": 0.04, "band": [None, None, None, None, 2]}
    json.dumps(document, allow_nan=False)  # what a reply does: it must not raise


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[1, 2]", "must hold a JSON object"),
        (b"{not json", "not valid JSON"),
        (b'{"loss": "\xff"}', "not valid JSON"),
        (b'{"loss": "a\\u0000b"}', "NUL character"),
        (json.dumps({"x": nested(MAX_NESTING + 1)}).encode(), "nests deeper than"),
        (b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not valid JSON"),
        (b'{"x": "' + b"a" * MAX_DOCUMENT_BYTES + b'"}', "larger than"),
    ],
)
def test_a_payload_document_that_cannot_be_served_is_refused(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "metrics.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as caught:
        load_object(path, "metrics.json")
    assert str(caught.value).startswith("metrics.json ")


def test_the_deepest_allowed_value_passes_and_one_more_level_does_not() -> None:
    deepest = {"x": nested(MAX_NESTING - 2)}  # an object holding lists: MAX_NESTING levels
    assert check_tree(deepest) is deepest
    with pytest.raises(ValueError, match="nests deeper"):
        check_tree({"x": nested(MAX_NESTING - 1)})
    with pytest.raises(ValueError, match="NaN"):
        check_tree({"x": [1.0, float("nan")]})
