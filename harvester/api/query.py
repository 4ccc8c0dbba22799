"""What every list endpoint shares: strict query parameters, sorting, name patterns.

FastAPI ignores query parameters it does not know; a monitor user who mistypes
``stauts=failed`` would silently get every task. Lists here refuse unknown
parameters instead (400 naming them and the known ones).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query, Request
from sqlalchemy import Select
from sqlalchemy.sql.elements import ColumnElement

from harvester.errors import InvalidRequest
from protocol.bodies import MAX_ID

MAX_PAGE = 1000
MAX_OFFSET = MAX_ID

TaskIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="jediTaskID")]
JobIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="PandaID")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]


async def reject_unknown_query_params(request: Request) -> None:
    """A router dependency: 400 for query parameters the endpoint does not declare."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = {p.alias for p in _all_query_params(dependant)}
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise InvalidRequest(
            f"unknown query parameter {', '.join(unknown)}; this endpoint takes "
            f"{', '.join(sorted(known)) or 'none'}"
        )


async def reject_nul_characters(request: Request) -> None:
    """A router dependency: 400 for a NUL in a query or path parameter.

    PostgreSQL cannot compare text with a NUL in it; SQLite would just match
    nothing. Both answer the same way here.
    """
    values = [*request.query_params.multi_items(), *request.path_params.items()]
    for name, value in values:
        if "\x00" in name or (isinstance(value, str) and "\x00" in value):
            raise InvalidRequest(f"parameter {name!r} contains a NUL character (\\x00)")


def _all_query_params(dependant: Any) -> list[Any]:
    params = list(dependant.query_params)
    for sub in dependant.dependencies:
        params += _all_query_params(sub)
    return params


def order_by(query: Select[Any], sort: str, columns: dict[str, ColumnElement[Any]]) -> Select[Any]:
    """``sort=name`` ascending, ``sort=-name`` descending; ties broken by the primary key."""
    descending = sort.startswith("-")
    key = sort.removeprefix("-")
    if key not in columns:
        raise InvalidRequest(
            f"cannot sort by {key!r}; sort by one of {', '.join(sorted(columns))} "
            "(prefix '-' for descending)"
        )
    column = columns[key]
    tiebreak = columns["id"]
    if descending:
        return query.order_by(column.desc(), tiebreak.desc())
    return query.order_by(column.asc(), tiebreak.asc())


def like_pattern(pattern: str) -> str:
    """A shell-style pattern (``*`` and ``?``) as a SQL LIKE pattern with ``\\`` escapes."""
    if len(pattern) > 256:
        raise InvalidRequest("name patterns are at most 256 characters")
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")
