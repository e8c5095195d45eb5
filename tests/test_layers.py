"""Imports point one way: api -> realtime -> (storeclient, backplane, wire) -> core.

The store process's code (DuckDB, Arrow, the writer, the outbox) is never imported by a
worker: a worker that imported it would pay ~40 MB and ~170 ms of start-up for nothing, and a
layer that points both ways cannot be understood (or replaced) one piece at a time. The only
way into `service.store` from the worker side is the embedded-mode branch of `connect_store`.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICE = ROOT / "service"

CORE = {
    "service.config",
    "service.constants",
    "service.errors",
    "service.gcpolicy",
    "service.hoptrace",
    "service.keys",
    "service.logthrottle",
    "service.metrics",
    "service.logging",
    "service.pb",
    "service.pid",
    "service.redaction",
    "service.wire",
}
# What each package may import besides itself and the core.
ALLOWED: dict[str, set[str]] = {
    "service.cli": {"*"},
    "service.supervisor": set(),
    "service.worker": set(),
    "service.gunicorn_conf": set(),
    "service.api": {"service.realtime", "service.storeclient", "service.backplane"},
    "service.realtime": {"service.storeclient", "service.backplane"},
    "service.store": {
        "service.storeclient.protocol",
        "service.storeclient.handshake",
        "service.backplane",
    },
    "service.storeclient": {"service.backplane"},
    "service.backplane": set(),
    "service.client": set(),
}
for core in CORE:
    ALLOWED.setdefault(core, set())
# Embedded mode (no store URL): the store runs in the API process. Imported lazily, here only.
EMBEDDED_ENTRY = ("service.storeclient", "service.store.embedded")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def owner(module: str, table: dict[str, set[str]]) -> str | None:
    """The longest key of `table` that is `module` or a package containing it."""
    best = None
    for key in table:
        if (module == key or module.startswith(key + ".")) and (
            best is None or len(key) > len(best)
        ):
            best = key
    return best


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return [name for name in found if name.startswith("service.")]


def violations() -> list[str]:
    bad = []
    for path in sorted(SERVICE.rglob("*.py")):
        mod = module_name(path)
        if mod == "service" or mod.startswith("service.pb"):
            continue
        home = owner(mod, ALLOWED)
        assert home is not None, f"{mod}: add it to a layer in tests/test_layers.py"
        allowed = ALLOWED[home] | CORE | {home}
        for target in imports(path):
            if "*" in allowed or owner(target, {a: set() for a in allowed}) is not None:
                continue
            if (home, target) == EMBEDDED_ENTRY or target.startswith(EMBEDDED_ENTRY[1] + "."):
                continue
            if owner(target, ALLOWED) is None and target.rsplit(".", 1)[0] in allowed:
                continue  # `from service.x import name`: a name, not a module
            bad.append(f"{mod} imports {target}")
    return bad


def test_imports_point_one_way() -> None:
    assert violations() == []


def test_a_worker_imports_neither_duckdb_nor_the_store() -> None:
    """create_app with a store URL (every gunicorn worker) leaves DuckDB and Arrow unloaded."""
    code = (
        "import sys\n"
        "from service.api.app import create_app\n"
        "from service.config import Settings\n"
        "create_app(Settings())\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('duckdb', 'pyarrow')"
        " or m.startswith('service.store.')]\n"
        "print(sorted(loaded))\n"
    )
    env = {**os.environ, "DUCKCAST_STORE_URL": "unix:/nonexistent/store.sock"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
