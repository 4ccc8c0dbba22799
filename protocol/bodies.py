"""What every request body obeys, and the limits its numbers keep to."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from protocol.documents import check_tree

MAX_ID = 2**31 - 1
"""Ids and codes live in 32-bit INTEGER columns; larger values are refused (422)."""
MAX_FILE_BYTES = 2**62


class RequestBody(BaseModel):
    """A body the API accepts: unknown fields, NUL characters and values nested
    deeper than ``MAX_NESTING`` are refused (422).

    PostgreSQL cannot store a NUL in text; refusing it on every database keeps
    the two backends answering alike.
    """

    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _plain(cls, value: Any) -> Any:
        return check_tree(value)
