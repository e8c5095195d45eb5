"""Passwords (argon2 via pwdlib) and signed, expiring session tokens.

A token is `v1.<user_id>.<expires_unix>.<hmac-sha256>`: any worker verifies it with the shared
secret, without a store round trip. Tokens are not revocable before they expire (logout clears
the cookie); keep the TTL short where that matters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass

from pwdlib import PasswordHash

_hasher = PasswordHash.recommended()
# Verified against when the user does not exist, so both failures cost the same time.
_DUMMY_HASH = _hasher.hash("duckcast-timing-equaliser")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    if password_hash is None:
        _hasher.verify(password, _DUMMY_HASH)
        return False
    try:
        return _hasher.verify(password, password_hash)
    except Exception:
        return False


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    user_id: int
    expires_at: int  # unix seconds

    @property
    def id(self) -> str:
        """Identifies this token (for revocation) without being usable as one."""
        return self.value.rsplit(".", 1)[-1]


class RevokedTokens:
    """Ids of tokens ended before their expiry (logout), checked on every request without I/O.

    Per worker for now: a revocation reaches only the worker that made it."""

    def __init__(self) -> None:
        self._expiry: dict[str, int] = {}

    def add(self, token: Token) -> None:
        self._expiry[token.id] = token.expires_at

    def __contains__(self, token_id: object) -> bool:
        return token_id in self._expiry


class TokenSigner:
    def __init__(self, secret: str, ttl_seconds: int) -> None:
        self._key = hashlib.sha256(b"duckcast-token:" + secret.encode()).digest()
        self.ttl = ttl_seconds

    def _sign(self, payload: str) -> str:
        mac = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def issue(self, user_id: int, now: float | None = None) -> Token:
        expires = int(now if now is not None else time.time()) + self.ttl
        payload = f"v1.{user_id}.{expires}"
        return Token(f"{payload}.{self._sign(payload)}", user_id, expires)

    def verify(self, value: str) -> Token | None:
        """The token, or None for a forged, malformed or expired one."""
        parts = value.split(".")
        if len(parts) != 4 or parts[0] != "v1" or len(value) > 200:
            return None
        payload = ".".join(parts[:3])
        if not hmac.compare_digest(parts[3], self._sign(payload)):
            return None
        try:
            user_id, expires = int(parts[1]), int(parts[2])
        except ValueError:
            return None
        return Token(value, user_id, expires) if expires > time.time() else None
