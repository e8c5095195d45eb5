"""Parameter types shared by the routes, so every route reads integers by one rule.

`AsciiInt` is what a route declares instead of `int` for a path or query integer: pydantic's
`int` also takes '+5', ' 5', '1_0' and '5.0', which the lean handlers of the hot routes
(service.api.routes.items, via `service.wire.bounded_int`) refuse; both accept exactly 1-19
ASCII digits, the rest is 422.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator

from service.wire import ascii_int


def _ascii_digits(value: object) -> object:
    if isinstance(value, str) and ascii_int(value) is None:
        raise ValueError("must be an integer in ASCII digits")
    return value


AsciiInt = Annotated[int, BeforeValidator(_ascii_digits)]
