"""Bearer-token authentication as a FastAPI dependency."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from harvester.context import HarvesterContext
from harvester.services.tokens import Principal, authenticate

_bearer = HTTPBearer(auto_error=False, description="a token from 'harvester token create'")


def get_context(request: Request) -> HarvesterContext:
    context: HarvesterContext = request.app.state.context
    return context


def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from ``Authorization: Bearer <token>`` (or the dashboard cookie)."""
    token = credentials.credentials if credentials else request.cookies.get("hpcaf_token")
    ctx = get_context(request)
    with ctx.sessions() as session:
        return authenticate(session, token)


Context = Annotated[HarvesterContext, Depends(get_context)]
CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
