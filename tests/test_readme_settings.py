"""The README's configuration table is the list of settings: every setting is in it (with its
limit written down), and every variable in it is a setting."""

from __future__ import annotations

import re
from pathlib import Path

from service.config import Settings

ALIASES = {"redis_url": "REDIS_URL"}  # (also DUCKCAST_REDIS_URL)
CLIENT_ONLY = {"DUCKCAST_URL"}  # read by the client commands (service/client), not the server


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("### Configuration", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Z_]+)`(?: / `([A-Z_]+)`)?", table, flags=re.M)
    documented = {name for row in rows for name in row if name}
    expected = {ALIASES.get(f, f"DUCKCAST_{f.upper()}") for f in Settings.model_fields}
    assert expected - documented == set(), "settings missing from the README table"
    extra = {v for v in documented - expected - CLIENT_ONLY if v.startswith("DUCKCAST_")}
    assert extra == set(), "README variables that are not settings"
