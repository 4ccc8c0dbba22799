"""Bearer-token authentication as a FastAPI dependency."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from harvester.context import HarvesterContext
from harvester.identity import Principal
from harvester.services.pilot_calls import principal_of

_bearer = HTTPBearer(auto_error=False, description="a token from 'harvester token create'")


def context_of(request: Request) -> HarvesterContext:
    """The process's :class:`HarvesterContext`, kept on the app."""
    context: HarvesterContext = request.app.state.context
    return context


async def get_context(request: Request) -> HarvesterContext:
    """:func:`context_of` as a dependency (``async``, so it costs no worker-thread trip)."""
    return context_of(request)


async def get_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str | None:
    """The bearer token as sent (``Authorization: Bearer <token>`` or the dashboard cookie)."""
    return credentials.credentials if credentials else request.cookies.get("hpcaf_token")


async def get_principal(
    request: Request, token: Annotated[str | None, Depends(get_token)]
) -> Principal:
    """The caller: from the process's token memory, else checked against the token table."""
    ctx = context_of(request)
    known = ctx.tokens.get(token)
    if known is not None:
        return known
    return await run_in_threadpool(principal_of, ctx, token)


Context = Annotated[HarvesterContext, Depends(get_context)]
CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
