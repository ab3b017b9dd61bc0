"""Authentication: token hashing, constant-time comparison, and who the caller is.

Tokens are kept only as SHA-256 digests. Generated tokens carry 256 random bits, so
a fast hash is enough to make a leaked digest useless (as with API keys elsewhere);
a slow password hash would cost every request milliseconds for no gain.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from app.ledger.errors import Unauthorized
from app.ledger.store import LedgerStore
from app.params import Params, parse_username

# Compared against when the username is unknown, so that an unknown user and a
# wrong token cost the same time and give the same answer.
_NO_ACCOUNT_DIGEST = hashlib.sha256(b"\x00no account\x00").digest()


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def presented_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization`` header: bare (the original style) or Bearer."""
    if authorization is None:
        return None
    value = authorization.strip()
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":
        value = rest.strip()
    return value or None


def authenticate(store: LedgerStore, params: Params, authorization: str | None) -> str:
    """The caller's username, once their token is proven; ``Unauthorized`` otherwise."""
    username = params.get("username", parse_username)
    token = presented_token(authorization)
    stored = None if username is None else store.token_digest(username)
    presented = token_digest(token or "")
    matches = hmac.compare_digest(presented, stored if stored is not None else _NO_ACCOUNT_DIGEST)
    if username is None or token is None or stored is None or not matches:
        raise Unauthorized()
    return username


def authenticate_admin(admin_digest: bytes | None, authorization: str | None) -> None:
    """Admin endpoints take the configured admin token; with none configured, nobody is admin."""
    token = presented_token(authorization)
    presented = token_digest(token or "")
    matches = hmac.compare_digest(presented, admin_digest or _NO_ACCOUNT_DIGEST)
    if admin_digest is None or token is None or not matches:
        raise Unauthorized()
