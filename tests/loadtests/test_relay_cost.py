"""`loadtests.relay_cost` runs against this checkout, keeps the page exact and prints its figure."""

from __future__ import annotations

import re

import pytest

from loadtests import relay_cost


def test_it_prints_cpu_per_event(capsys: pytest.CaptureFixture[str]) -> None:
    assert relay_cost.main(["--batches", "5", "--events", "8", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"relay: CPU per event min [\d.]+ us, median [\d.]+ us \(8 events", out), out
