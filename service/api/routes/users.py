from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from service.api.auth import hash_password, verify_password
from service.api.deps import CurrentUser, SettingsDep, SignerDep, StoreDep, presented_tokens
from service.api.errors import error_response
from service.api.hashing import PasswordHashing
from service.api.negotiation import documented, parse_body, render
from service.api.schemas import Credentials, LoginIn, LoginOut, UserOut
from service.api.throttle import LoginThrottle
from service.errors import DuckcastError, NotFound, Unauthorized
from service.pb import duckcast_pb2 as pb
from service.wire import login_json, set_us, user_json

router = APIRouter(prefix="/api", tags=["users"])


@router.post("/register", **documented(Credentials, UserOut, 201))
async def register(request: Request, store: StoreDep) -> Response:
    creds = await parse_body(request, Credentials, pb.RegisterRequest)
    hashing: PasswordHashing = request.app.state.hashing
    password_hash = await hashing.run(hash_password, creds.password)
    user = await store.create_user(creds.username, password_hash)
    return render(request, user, user_json, 201)


@router.post(
    "/login",
    **documented(
        LoginIn,
        LoginOut,
        errors={429: "Too many failed logins for this name or client: see Retry-After"},
    ),
)
async def login(
    request: Request, store: StoreDep, signer: SignerDep, settings: SettingsDep
) -> Response:
    creds = await parse_body(request, LoginIn, pb.LoginRequest)
    state = request.app.state
    throttle: LoginThrottle = state.login_throttle
    hashing: PasswordHashing = state.hashing
    address = request.client.host if request.client else ""
    await throttle.check(creds.username, address)
    try:
        record = await store.get_user_by_name(creds.username)
        user, password_hash = record.user, record.password_hash
    except NotFound:
        user, password_hash = None, None
    ok = await hashing.run(verify_password, creds.password, password_hash)
    if not ok or user is None:
        await throttle.failed(creds.username, address)
        raise Unauthorized("invalid username or password")
    await throttle.succeeded(creds.username, address)
    token = signer.issue(user.id)
    body = pb.LoginResponse(token=token.value, token_type="bearer", user=user)
    set_us(body.expires_at, token.expires_at * 1_000_000)
    response = render(request, body, login_json)
    response.set_cookie(
        settings.cookie_name,
        token.value,
        max_age=signer.ttl,
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure,
        path="/",
    )
    return response


@router.post("/logout", status_code=204)
async def logout(request: Request, store: StoreDep, settings: SettingsDep) -> Response:
    """Ends the session: 204 and the cookie cleared whatever was sent (an expired or foreign
    cookie included: a client must always be able to sign out); every valid token presented
    is revoked on every worker. If the store cannot record that, 503 (the token still works
    elsewhere: retry), and the cookie is cleared all the same."""
    response = Response(status_code=204)
    try:
        for token in presented_tokens(request):
            await store.revoke_token(token.id, token.expires_at)
            request.app.state.revoked.add(token)
    except DuckcastError as exc:
        response = error_response(request, exc)
    response.delete_cookie(
        settings.cookie_name, path="/", httponly=True, samesite="lax", secure=settings.cookie_secure
    )
    return response


@router.get("/me", **documented(response_model=UserOut))
async def me(request: Request, user_id: CurrentUser, store: StoreDep) -> Response:
    try:
        user = await store.get_user(user_id)
    except NotFound:
        raise Unauthorized("the session's user no longer exists") from None
    return render(request, user, user_json)
