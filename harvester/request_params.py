"""Request parameters both web front ends take: ids in paths, list offsets, no NULs.

The REST API (:mod:`harvester.api`) mounts the dashboard
(:mod:`harvester.dashboard`), so the dashboard cannot import the API's modules
without a cycle; what both need of a request's parameters lives here, below
both. The API's own rule for lists (unknown query parameters are refused) is
:mod:`harvester.api.query`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query, Request

from harvester.errors import InvalidRequest
from protocol.bodies import MAX_ID

MAX_OFFSET = MAX_ID

TaskIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="jediTaskID")]
JobIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="PandaID")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]


async def reject_nul_characters(request: Request) -> None:
    """A router dependency: 400 for a NUL in a query or path parameter.

    PostgreSQL cannot compare text with a NUL in it; SQLite would just match
    nothing. Both answer the same way here.
    """
    values = [*request.query_params.multi_items(), *request.path_params.items()]
    for name, value in values:
        if "\x00" in name or (isinstance(value, str) and "\x00" in value):
            raise InvalidRequest(f"parameter {name!r} contains a NUL character (\\x00)")
