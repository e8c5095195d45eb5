"""Dependency aliases so routes read like prose: `user: CurrentUser`, `store: StoreDep`.

The dependencies are `async def` although they never await: FastAPI runs a plain `def`
dependency in its threadpool, a thread hop per dependency per request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from service.api.auth import TokenSigner
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


def user_id(conn: HTTPConnection, allow_query: bool) -> int:
    token = _token(conn, allow_query)
    if token is None:
        raise Unauthorized("not authenticated: send a bearer token or the session cookie")
    signer: TokenSigner = conn.app.state.signer
    verified = signer.verify(token)
    if verified is None:
        raise Unauthorized("invalid or expired token")
    return verified


async def current_user_id(conn: HTTPConnection) -> int:
    return user_id(conn, allow_query=False)


def stream_user_id(conn: HTTPConnection) -> int:
    """SSE and WebSocket clients cannot always set headers, so `?token=` is accepted too."""
    return user_id(conn, allow_query=True)


StoreDep = Annotated[StoreClient, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
SignerDep = Annotated[TokenSigner, Depends(get_signer)]
CurrentUser = Annotated[int, Depends(current_user_id)]
StreamUser = Annotated[int, Depends(stream_user_id)]
