"""Dependency aliases so routes read like prose: `user: CurrentUser`, `store: StoreDep`.

The dependencies are `async def` although they never await: FastAPI runs a plain `def`
dependency in its threadpool, a thread hop per dependency per request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection
from starlette.types import Scope

from service.api.auth import RevokedTokens, Token, TokenSigner
from service.config import Settings
from service.errors import Unauthorized
from service.logging import note_user
from service.storeclient import StoreClient


async def get_store(conn: HTTPConnection) -> StoreClient:
    store: StoreClient = conn.app.state.store
    return store


async def get_settings(conn: HTTPConnection) -> Settings:
    settings: Settings = conn.app.state.settings
    return settings


async def get_signer(conn: HTTPConnection) -> TokenSigner:
    signer: TokenSigner = conn.app.state.signer
    return signer


def _candidates(conn: HTTPConnection, allow_query: bool) -> Iterator[str]:
    """The texts the request offers as its token, in order of precedence: the bearer header,
    the session cookie, `?token=` (streams only), each looked at only if the one before is
    asked for (a bearer request's cookies are not parsed). Whatever the text (non-ASCII,
    control characters, 10 KB), TokenSigner.verify() only says no."""
    scheme, _, value = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        yield value.strip()
    settings: Settings = conn.app.state.settings
    cookie = conn.cookies.get(settings.cookie_name)
    if cookie:
        yield cookie
    if allow_query and (query := conn.query_params.get("token")):
        yield query


def presented_tokens(conn: HTTPConnection) -> list[Token]:
    """Every valid, unrevoked token the request carries (header and cookie): what logout ends."""
    signer: TokenSigner = conn.app.state.signer
    revoked: RevokedTokens = conn.app.state.revoked
    found = {}
    for text in _candidates(conn, allow_query=False):
        token = signer.verify(text)
        if token is not None and token.id not in revoked:
            found[token.id] = token
    return list(found.values())


# The session a lean handler verified (service.api.routing), kept for the FastAPI endpoint it
# hands an unusual request to: a token is checked once per request.
SESSION_KEY = "duckcast.session"


def session(conn: HTTPConnection, allow_query: bool) -> Token:
    """The caller's valid session token: signed with this deployment's key, unexpired, not
    revoked on any worker (service.api.revocation). Unauthorized otherwise."""
    verified: Token | None = conn.scope.get(SESSION_KEY)
    if verified is not None and not allow_query:
        return verified
    value = next(_candidates(conn, allow_query), None)
    if value is None:
        raise Unauthorized("not authenticated: send a bearer token or the session cookie")
    token = _checked(conn.scope, value)
    if not allow_query:
        conn.scope[SESSION_KEY] = token
    return token


def _checked(scope: Scope, value: str) -> Token:
    state = scope["app"].state
    signer: TokenSigner = state.signer
    token = signer.verify(value)
    revoked: RevokedTokens = state.revoked
    if token is None or token.id in revoked:
        raise Unauthorized("invalid or expired token")
    note_user(token.user_id)  # the access log and later log records name the caller
    return token


def scope_session(scope: Scope, authorization: bytes | None) -> Token:
    """session(conn, allow_query=False) for a lean handler (service.api.routing) that has read
    the request's first Authorization header itself (None: there is none): a bearer token is
    checked without a Request; anything else goes through session() as it is."""
    if authorization is not None:
        scheme, _, value = authorization.decode("latin-1").partition(" ")
        value = value.strip()
        if value and scheme.lower() == "bearer":
            token = _checked(scope, value)
            scope[SESSION_KEY] = token
            return token
    return session(HTTPConnection(scope), allow_query=False)


def user_id(conn: HTTPConnection, allow_query: bool) -> int:
    return session(conn, allow_query).user_id


async def current_session(conn: HTTPConnection) -> Token:
    return session(conn, allow_query=False)


async def current_user_id(conn: HTTPConnection) -> int:
    return user_id(conn, allow_query=False)


def stream_session(conn: HTTPConnection) -> Token:
    """SSE and WebSocket clients cannot always set headers, so `?token=` is accepted too.
    A stream must end when its token expires (`expires_at`) or is revoked (`revoked`)."""
    return session(conn, allow_query=True)


StoreDep = Annotated[StoreClient, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
SignerDep = Annotated[TokenSigner, Depends(get_signer)]
CurrentSession = Annotated[Token, Depends(current_session)]
CurrentUser = Annotated[int, Depends(current_user_id)]
