"""An installed duckcast (a wheel, no checkout) runs several workers from any directory, and
every process of `serve --workers` logs JSON lines through the one logging setup."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import RedisServer, wait_until
from tests.e2e.conftest import Deployment

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def install_wheel(tmp_path: Path) -> Path:
    """The project built as a wheel from what the Dockerfile copies (a copy: a build in the
    checkout would leave build/ there, and reuse it), installed into a directory of its own
    (dependencies stay the venv's); returns that directory, for PYTHONPATH."""
    source, wheels, site = tmp_path / "src", tmp_path / "wheels", tmp_path / "site"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, source / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "service", source / "service", ignore=skip)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("duckcast-*.whl")
    install = [*pip, "install", "--no-deps", "--target", str(site), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    return site


def test_installed_wheel_serves_several_workers_from_another_directory(
    deployment: Deployment, redis_server: RedisServer, tmp_path: Path
) -> None:
    """`duckcast serve --workers 2` from a wheel, started in a directory with no deploy/ or
    protos/: it comes up (gunicorn's settings are in the package), serves the schema from
    package data, and every line any of its processes writes to stderr is a JSON object, the
    supervisor's, the store's, gunicorn's and each worker's, with an access line per request."""
    site = install_wheel(tmp_path)
    where = subprocess.run(
        [sys.executable, "-c", "import service; print(service.__file__)"],
        env=deployment.env(PYTHONPATH=str(site)),
        cwd=deployment.logdir,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(site), "the checkout was imported instead"
    assert not (deployment.logdir / "deploy").exists()

    api = deployment.serve(workers=2, REDIS_URL=redis_server.url, PYTHONPATH=str(site))
    with httpx.Client(base_url=api.url, timeout=10) as c:
        r = c.get("/protos/duckcast.proto", headers={"X-Request-ID": "schema-1"})
        assert r.status_code == 200
        assert r.text == (ROOT / "protos" / "duckcast.proto").read_text()

    def workers_started() -> bool:
        lines = api.stderr_path.read_text().splitlines()
        started = [line for line in lines if "Application startup complete" in line]
        return len({json.loads(line)["pid"] for line in started}) == 2

    wait_until(workers_started, timeout=60)  # /readyz answered from the first one up
    api.signal(signal.SIGTERM)
    assert api.wait(timeout=30) == 0, api.log_tail()

    stderr = api.stderr_path.read_text().splitlines()
    records = [json.loads(line) for line in stderr if line.strip()]  # raises on a text line
    assert all({"time", "level", "logger", "message", "pid"} <= set(r) for r in records)
    loggers = {r["logger"] for r in records}
    assert {"duckcast.supervisor", "gunicorn.error", "uvicorn.error", "duckcast.access"} <= loggers
    assert any(r["logger"].startswith("service.store") for r in records), loggers
    worker_pids = {r["pid"] for r in records if r["logger"] == "uvicorn.error"}
    assert len(worker_pids) == 2, "not every worker logged through the setup"
    (access,) = [r for r in records if r.get("request_id") == "schema-1"]
    assert access["route"] == "/protos/{name}.proto" and access["status"] == 200
