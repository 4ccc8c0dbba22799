"""Who is calling: the principal of a bearer token, and the one-way hash that names a token.

Below the services, so that the per-process token cache
(:mod:`harvester.stores.caches`), which the context holds, keeps principals
without importing a service; the token check (:mod:`harvester.services.tokens`)
and the front ends use them too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from db.models import Role
from harvester.errors import Forbidden


@dataclass(frozen=True)
class Principal:
    """Who is calling: the user name and the role of the token used."""

    user: str
    role: Role
    token_id: int

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def require(self, *roles: Role) -> None:
        """Raise 403 unless the token has one of ``roles`` (admins pass everywhere)."""
        if self.role not in roles and not self.is_admin:
            allowed = " or ".join(r.value for r in roles)
            raise Forbidden(f"a {self.role.value} token cannot do this (needs {allowed})")


def hash_token(token: str) -> str:
    """Tokens carry 256 random bits, so a plain SHA-256 is a safe one-way store."""
    return hashlib.sha256(token.encode()).hexdigest()
