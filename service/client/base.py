"""What `Client` and `AsyncClient` share: their settings, and the contract's calls as methods,
declared once.

`endpoint(build)` turns a function that builds a `Call[T]` into a method with the same
signature and docstring: on a `Client` it returns `T`, on an `AsyncClient` an awaitable of `T`
(the overloads of `__get__` tell type checkers which).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Mapping
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from service.client import calls
from service.client.calls import Call
from service.client.codec import FORMATS, Format
from service.client.retry import Retry
from service.pb import duckcast_pb2 as pb

if TYPE_CHECKING:
    from typing import Self

    from service.client.aio import AsyncClient
    from service.client.sync import Client

P = ParamSpec("P")
T = TypeVar("T")


class endpoint(Generic[P, T]):  # used like a decorator, named like one
    def __init__(self, build: Callable[P, Call[T]]) -> None:
        self.build = build
        self.__doc__ = build.__doc__

    @overload
    def __get__(self, client: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(
        self, client: AsyncClient, owner: type[Any]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...
    @overload
    def __get__(self, client: Client, owner: type[Any]) -> Callable[P, T]: ...
    def __get__(self, client: Any, owner: type[Any]) -> Any:
        if client is None:
            return self
        build, send = self.build, client.send

        @functools.wraps(build)
        def method(*args: P.args, **kwargs: P.kwargs) -> Any:
            return send(build(*args, **kwargs))

        return method


DEFAULT_URL = "http://127.0.0.1:8000"


def no_cookies() -> CookieJar:
    """A cookie jar that keeps nothing: the client authenticates with its bearer `token`
    only, so clearing the token really signs it out (login also sets a session cookie, for
    browsers)."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


class ClientBase:
    """Settings of a client, and every call of the contract as a method (each documented in
    service.client.calls).

    `url` is the server's base URL; `token` the bearer token (set by `login`, or give one you
    kept); `format` what goes on the wire, "protobuf" (default) or "json" (results are the
    same messages either way); `timeout` per request in seconds; `retry` when calls are tried
    again (service.client.retry.Retry; `NO_RETRY` to never); `http` extra keyword arguments
    for the underlying httpx client (`verify=`, `headers=`, `transport=`...)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        format: Format = "protobuf",
        timeout: float = 10.0,
        retry: Retry | None = None,
        http: Mapping[str, Any] | None = None,
    ) -> None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, not {format!r}")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, not {url!r}")
        self.url = url.rstrip("/")
        self.token = token
        self.format: Format = format
        self.timeout = timeout
        self.retry = retry or Retry()
        self._http = self._open_http(
            {"base_url": self.url, "timeout": timeout, "cookies": no_cookies(), **(http or {})}
        )

    def _open_http(self, options: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _finish(self, call: Call[T], result: T) -> T:
        """A call's result, once the session it set or ended is this client's."""
        if call.session == "set" and isinstance(result, pb.LoginResponse):
            self.token = result.token
        elif call.session == "clear":
            self.token = None
        return result

    register = endpoint(calls.register)
    login = endpoint(calls.login)
    logout = endpoint(calls.logout)
    me = endpoint(calls.me)
    list_items = endpoint(calls.list_items)
    get_item = endpoint(calls.get_item)
    create_item = endpoint(calls.create_item)
    bulk_create = endpoint(calls.bulk_create)
    update_item = endpoint(calls.update_item)
    patch_item = endpoint(calls.patch_item)
    delete_item = endpoint(calls.delete_item)
    stats = endpoint(calls.stats)
    upload = endpoint(calls.upload)
