"""Passwords (argon2 via pwdlib) and signed, expiring, revocable session tokens.

A token is `v2.<user_id>.<expires_unix>.<token_id>.<hmac-sha256>`: any worker verifies it
with the key derived from the shared secret (service.keys), without a store round trip.
`token_id` is random, so two logins in the same second get different tokens, and it is what a
revocation names (service.api.revocation): a revoked token is refused by every worker.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

from pwdlib import PasswordHash

from service.wire import INT64_MAX, bounded_int

_hasher = PasswordHash.recommended()
# Verified against when the user does not exist, so both failures cost the same time.
_DUMMY_HASH = _hasher.hash("duckcast-timing-equaliser")

VERSION = "v2"
MAX_TOKEN_CHARS = 200
MAX_EXPIRY = 2**40  # unix seconds, ~year 36800: far beyond any TTL, far below overflow


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
    # Names this token (for revocation) without being usable as one: its random part, read
    # once (every request checks it against the revoked set).
    id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", self.value.split(".")[3])


# Tokens whose signature this worker has checked: a client sends the same one with every
# request, and the HMAC is most of what verifying costs. Bounded (cleared when full); only
# signed tokens get in, and their expiry is checked on every use.
VERIFIED_MAX = 4096


class TokenSigner:
    def __init__(self, key: bytes, ttl_seconds: int) -> None:
        self._key = key
        self.ttl = ttl_seconds
        self._verified: dict[str, Token] = {}

    def _sign(self, payload: str) -> bytes:
        mac = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=")

    def issue(self, user_id: int, now: float | None = None) -> Token:
        expires = int(now if now is not None else time.time()) + self.ttl
        payload = f"{VERSION}.{user_id}.{expires}.{secrets.token_urlsafe(16)}"
        return Token(f"{payload}.{self._sign(payload).decode()}", user_id, expires)

    def verify(self, value: str) -> Token | None:
        """The token, or None for a forged, malformed or expired one: never an exception,
        whatever the text (a header decoded as latin-1, a cookie, a percent-decoded query)."""
        known = self._verified.get(value)
        if known is not None:
            return known if known.expires_at > time.time() else None
        if len(value) > MAX_TOKEN_CHARS or not value.isascii():
            return None
        parts = value.split(".")
        if len(parts) != 5 or parts[0] != VERSION:
            return None
        payload, _, mac = value.rpartition(".")
        # bytes, not str: compare_digest raises TypeError on non-ASCII str (issue #6.1).
        if not hmac.compare_digest(mac.encode(), self._sign(payload)):
            return None
        # A signature this key made always holds a real id and expiry; bounding them anyway
        # keeps a token minted with a leaked key from reaching the store with id -5 or 2**70.
        user_id = bounded_int(parts[1], 1, INT64_MAX)
        expires = bounded_int(parts[2], 0, MAX_EXPIRY)
        if user_id is None or expires is None or expires <= time.time():
            return None
        token = Token(value, user_id, expires)
        if len(self._verified) >= VERIFIED_MAX:
            self._verified.clear()
        self._verified[value] = token
        return token


class RevokedTokens:
    """Ids of tokens ended before their expiry, checked on every request without I/O
    (`token.id in revoked`). Filled by this worker's logouts at once, and by everyone's
    through `service.api.revocation.RevocationSync`; an entry leaves when its token expires."""

    def __init__(self) -> None:
        self._expiry: dict[str, int] = {}
        self.version = 0  # grows with every id added (the ring's sweep rechecks streams then)

    def add(self, token: Token) -> None:
        self.add_id(token.id, token.expires_at)

    def add_id(self, token_id: str, expires_at: int) -> None:
        if token_id not in self._expiry:
            self.version += 1
        self._expiry[token_id] = expires_at

    def prune(self, now: float | None = None) -> None:
        """Forget tokens that have expired anyway (verify refuses them by their expiry)."""
        now = time.time() if now is None else now
        for token_id in [t for t, exp in self._expiry.items() if exp <= now]:
            del self._expiry[token_id]

    def __contains__(self, token_id: object) -> bool:
        return token_id in self._expiry

    def __len__(self) -> int:
        return len(self._expiry)
