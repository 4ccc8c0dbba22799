"""The dashboard's login: the API token in a cookie, and CSRF tokens for its forms.

The cookie holds the user's own API token (``HttpOnly``, ``SameSite=Strict``),
so the dashboard has exactly the rights of that token and nothing is stored
server-side. Every form that changes something carries a CSRF token: an HMAC
of the cookie's token under a secret of this harvester home (shared by all its
instances), checked in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

COOKIE = "hpcaf_token"


def load_secret(home: Path) -> bytes:
    """The CSRF secret in ``$HPCAF_HOME/dashboard.secret`` (made once, mode 0600)."""
    path = home / "dashboard.secret"
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        pass
    home.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret.hex())
    try:
        os.link(tmp, path)  # the first instance wins; the others read its secret
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


def csrf_token(secret: bytes, api_token: str) -> str:
    return hmac.new(secret, b"csrf:" + api_token.encode(), hashlib.sha256).hexdigest()


def csrf_valid(secret: bytes, api_token: str | None, submitted: str | None) -> bool:
    if not api_token or not submitted:
        return False
    return hmac.compare_digest(csrf_token(secret, api_token), submitted)
