"""API tokens: created once, shown once, stored as SHA-256, revocable."""

from __future__ import annotations

import re
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Role, Token, utcnow
from harvester.errors import InvalidRequest, NotFoundError, Unauthorized
from harvester.identity import Principal, hash_token

TOKEN_PREFIX = "hpcaf_"
USER_NAME_PATTERN = r"^[a-z][a-z0-9_\-]{0,63}$"


def create_token(session: Session, user: str, role: Role) -> str:
    """Store a new token for ``user`` and return its plaintext (shown once)."""

    if not re.match(USER_NAME_PATTERN, user):
        raise InvalidRequest(
            f"invalid user name {user!r}: lowercase letters, digits, '_' or '-', "
            "starting with a letter"
        )
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(Token(user=user, role=role, token_hash=hash_token(plaintext)))
    return plaintext


def authenticate(session: Session, token: str | None) -> Principal:
    """The principal of a bearer token, or 401."""
    if not token:
        raise Unauthorized("missing bearer token (set HPCAF_TOKEN)")
    row = session.scalar(select(Token).where(Token.token_hash == hash_token(token)))
    if row is None or row.revoked_at is not None:
        raise Unauthorized("invalid or revoked token")
    return Principal(user=row.user, role=row.role, token_id=row.id)


def revoke_tokens(session: Session, user: str, token_id: int | None = None) -> int:
    """Revoke one token of ``user`` (by id) or all of them; returns how many."""
    query = select(Token).where(Token.user == user, Token.revoked_at.is_(None))
    if token_id is not None:
        query = query.where(Token.id == token_id)
    rows = session.scalars(query).all()
    if not rows:
        raise NotFoundError(
            f"no active token of user {user!r}"
            + (f" with id {token_id}" if token_id is not None else "")
        )
    for row in rows:
        row.revoked_at = utcnow()
    return len(rows)
