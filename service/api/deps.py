"""Dependency aliases so routes read like prose: `user: CurrentUser`, `store: StoreDep`.

The dependencies are `async def` although they never await: FastAPI runs a plain `def`
dependency in its threadpool, a thread hop per dependency per request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from service.api.auth import RevokedTokens, Token, TokenSigner
from service.config import Settings
from service.errors import Unauthorized
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


def _token(conn: HTTPConnection, allow_query: bool) -> str | None:
    # Whatever the text (non-ASCII, control characters, 10 KB), verify() only says no.
    auth = conn.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value:
            return value.strip()
    settings: Settings = conn.app.state.settings
    cookie = conn.cookies.get(settings.cookie_name)
    if cookie:
        return cookie
    if allow_query:
        return conn.query_params.get("token")
    return None


def presented_tokens(conn: HTTPConnection) -> list[Token]:
    """Every valid, unrevoked token the request carries (header and cookie): what logout ends."""
    settings: Settings = conn.app.state.settings
    auth = conn.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    values = [value.strip()] if scheme.lower() == "bearer" else []
    values.append(conn.cookies.get(settings.cookie_name, ""))
    signer: TokenSigner = conn.app.state.signer
    revoked: RevokedTokens = conn.app.state.revoked
    found = {}
    for text in values:
        token = signer.verify(text) if text else None
        if token is not None and token.id not in revoked:
            found[token.id] = token
    return list(found.values())


def session(conn: HTTPConnection, allow_query: bool) -> Token:
    """The caller's valid session token: signed with this deployment's key, unexpired, not
    revoked on any worker (service.api.revocation). Unauthorized otherwise."""
    value = _token(conn, allow_query)
    if value is None:
        raise Unauthorized("not authenticated: send a bearer token or the session cookie")
    state = conn.app.state
    signer: TokenSigner = state.signer
    token = signer.verify(value)
    revoked: RevokedTokens = state.revoked
    if token is None or token.id in revoked:
        raise Unauthorized("invalid or expired token")
    return token


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
