"""One page of a long list."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """A page of a list with the total count."""

    total: int
    limit: int
    offset: int
    items: list[T]
