"""`loadtests.store_inprocess` runs against this checkout and prints its figures."""

from __future__ import annotations

import re

import pytest

from loadtests import store_inprocess


def test_it_prints_cpu_batch_and_calls_per_create(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--turns", "2", "--rounds", "1", "--requests", "2", "--creates", "4"]
    args += ["--calls", "--fsync"]
    assert store_inprocess.main(args) == 0
    out = capsys.readouterr().out
    found = re.search(r"median (\d+) us; ([\d.]+) writes per commit; ([\d.]+) Python calls", out)
    assert found, out
    assert float(found[2]) >= 1 and float(found[3]) > 0
    assert re.search(r"log append of 8 events \+ fdatasync: \d+ us CPU, \d+ us wall", out), out
