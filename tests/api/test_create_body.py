"""The hot path of POST /api/items validates a body by hand (service.api.schemas
.valid_item_create) instead of with the ItemCreate model: whatever it accepts, the model
accepts too, with the same values; what it does not take, the model answers as before."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from service.api.schemas import ItemCreate, item_create_pb, valid_item_create
from service.pb import duckcast_pb2 as pb
from service.wire import STATUSES, proto_fields

VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**65), 2**65),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from([*STATUSES, "Active", "", "x" * 200, "x" * 201, "é" * 200, 0, 1.0, 100, 101]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
FIELDS = st.sampled_from(["title", "description", "status", "priority", "owner_id", "Title"])
BODY = st.one_of(
    st.dictionaries(FIELDS, VALUE, max_size=5),
    VALUE,
    st.fixed_dictionaries(
        {"title": st.text(min_size=0, max_size=201)},
        optional={
            "description": st.one_of(st.text(max_size=20), st.just("d" * 10_001)),
            "status": st.sampled_from([*STATUSES, "bogus"]),
            "priority": st.one_of(st.integers(-2, 102), st.booleans()),
        },
    ),
)


def by_model(data: Any) -> pb.ItemCreate | None:
    try:
        return item_create_pb(ItemCreate.model_validate(data))
    except ValidationError:
        return None


@given(BODY)
@example({"title": "t"})
@example({"title": "t", "priority": True})
@example({"title": "t", "priority": 1.0})
@example({"title": "x" * 201})
@example({"title": "t", "description": "d" * 10_001})
@example({"title": "t", "status": "Active"})
@example({"title": "t", "extra": 1})
def test_what_the_hand_check_accepts_the_model_accepts_alike(data: Any) -> None:
    # the body as the route decodes it: JSON through orjson (json.dumps for big integers)
    try:
        decoded = orjson.loads(json.dumps(data))
    except orjson.JSONDecodeError:
        return  # a 400 before validation
    fast = valid_item_create(decoded)
    if fast is not None:
        assert fast == by_model(decoded), decoded


@given(
    st.text(max_size=201),
    st.text(max_size=5),
    st.sampled_from([*STATUSES, "", "bogus"]),
    st.integers(-(2**31), 2**31 - 1),
    st.sets(st.sampled_from(["title", "description", "status", "priority"])),
)
def test_protobuf_bodies_alike(
    title: str, description: str, status: str, priority: int, unset: set[str]
) -> None:
    msg = pb.ItemCreate(title=title, description=description, status=status, priority=priority)
    for name in unset:
        msg.ClearField(name)  # type: ignore[arg-type]
    decoded = proto_fields(pb.ItemCreate.FromString(msg.SerializeToString()))
    fast = valid_item_create(decoded)
    if fast is not None:
        assert fast == by_model(decoded), decoded


def test_the_hand_check_takes_the_common_bodies() -> None:
    """The comparisons above would pass if it never accepted anything."""
    least = pb.ItemCreate(title="t", description="", status="active", priority=0)
    assert valid_item_create({"title": "t"}) == least
    full = {"title": "t", "description": "d", "status": "completed", "priority": 100}
    assert valid_item_create(full) == pb.ItemCreate(
        title="t", description="d", status="completed", priority=100
    )
