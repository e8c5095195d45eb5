"""`loadtests.worker_creates` serves creates through the app against a real store process."""

from __future__ import annotations

import re

import pytest

from loadtests import worker_creates


def test_it_prints_cpu_per_create_and_collections(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--concurrency", "4", "--turns", "3", "--rounds", "1", "--settle", "--gc-stats"]
    assert worker_creates.main(args) == 0
    out = capsys.readouterr().out
    assert re.search(r"gc per create: gen 0: [\d.]+ collections", out), out
    assert re.search(r"CPU per create median [\d.]+ us .*; the store process [\d.]+ us", out), out
