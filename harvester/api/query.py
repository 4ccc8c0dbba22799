"""What every REST endpoint shares: strict query parameters, and the size of a page.

FastAPI ignores query parameters it does not know; a monitor user who mistypes
``stauts=failed`` would silently get every task. Lists here refuse unknown
parameters instead (400 naming them and the known ones).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from harvester.errors import InvalidRequest

MAX_PAGE = 1000


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


def _all_query_params(dependant: Any) -> list[Any]:
    params = list(dependant.query_params)
    for sub in dependant.dependencies:
        params += _all_query_params(sub)
    return params
