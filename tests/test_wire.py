"""service.wire: the JSON timestamps (RFC 3339, UTC, `Z`), formatted from a per-second cache,
are what datetime.isoformat gives."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import example, given
from hypothesis import strategies as st

from service.wire import rfc3339


@given(st.integers(-62135596800, 253402300799), st.integers(0, 999_999_999))
@example(0, 0)
@example(1764288776, 999)  # below a microsecond: no fraction
@example(1764288776, 1000)
@example(1764288776, 999_999_999)
def test_rfc3339_is_isoformat_in_utc_with_z(seconds: int, nanos: int) -> None:
    ts = Timestamp(seconds=seconds, nanos=nanos)
    dt = datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanos // 1000)
    assert rfc3339(ts) == dt.isoformat().replace("+00:00", "Z")
    assert rfc3339(ts) == rfc3339(ts)  # and again, from the cache
