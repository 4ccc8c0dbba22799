"""What every list endpoint shares: strict query parameters, ids, offsets.

FastAPI ignores query parameters it does not know; a monitor user who mistypes
``stauts=failed`` would silently get every task. Lists here refuse unknown
parameters instead (400 naming them and the known ones).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query, Request

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
