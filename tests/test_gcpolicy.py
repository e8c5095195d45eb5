"""service.gcpolicy: a server process's collector after start-up."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from service import gcpolicy


@pytest.fixture
def restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_settle_freezes_what_exists_and_raises_the_young_threshold(restored: None) -> None:
    before = gc.get_freeze_count()
    gcpolicy.settle(12_345)
    assert gc.get_threshold()[0] == 12_345
    assert gc.get_freeze_count() > before


def test_settle_zero_keeps_python_defaults(restored: None) -> None:
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    gcpolicy.settle(0)
    assert gc.get_threshold() == threshold
    assert gc.get_freeze_count() == frozen


def test_settle_collects_garbage_before_freezing(restored: None) -> None:
    class Node:
        ref: object

    collected = []

    class Cycle(Node):
        def __del__(self) -> None:
            collected.append(True)

    a, b = Cycle(), Node()
    a.ref, b.ref = b, a
    del a, b
    gcpolicy.settle(10_000)
    assert collected, "a garbage cycle was frozen instead of collected"
