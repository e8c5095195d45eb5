"""The deployment files (Dockerfile, compose, Prometheus, Grafana) agree with the code.

No Docker engine is needed: these tests read the files and check them against the real CLI,
the real Settings and each other, so a renamed flag, setting or metric breaks a test here
instead of a deployment.
"""

from __future__ import annotations

import json
import re
import runpy
import shlex
import subprocess
import sys
import tomllib
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"

COUNTERS_AND_GAUGES = {
    "duckcast_http_requests_total",
    "duckcast_store_requests_total",
    "duckcast_events_published_total",
    "duckcast_subscribers",
    "duckcast_deliveries_total",
}
HISTOGRAMS = {
    "duckcast_http_request_duration_seconds",
    "duckcast_store_request_duration_seconds",
    "duckcast_commit_batch_size",
    "duckcast_commit_duration_seconds",
}
EXPORTED_SERIES = COUNTERS_AND_GAUGES | {
    h + suffix for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")
}
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset",
}  # fmt: skip


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@cache
def compose() -> dict[str, Any]:
    return load_yaml(ROOT / "docker-compose.yml")  # type: ignore[no-any-return]


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]  # type: ignore[no-any-return]


def words(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def duckcast_commands() -> list[list[str]]:
    """Every `duckcast …` command line: compose service commands and the Dockerfile CMD."""
    cmds = [words(s["command"]) for s in services().values() if "command" in s]
    cmds.append(dockerfile_cmd())
    return [c for c in cmds if c[0] == "duckcast"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, args = line.partition(" ")
            out.append((op.upper(), args.strip()))
    return out


def dockerfile_cmd() -> list[str]:
    cmds = [args for op, args in dockerfile_instructions() if op == "CMD"]
    assert cmds, "Dockerfile has no CMD"
    cmd = json.loads(cmds[-1])  # exec form, so signals reach the process directly
    assert isinstance(cmd, list)
    return cmd


def dockerfile_copy_sources() -> set[str]:
    sources: set[str] = set()
    for op, args in dockerfile_instructions():
        if op == "COPY":
            parts = [p for p in args.split() if not p.startswith("--")]
            sources.update(p.removeprefix("./").rstrip("/") for p in parts[:-1])
    return sources


def ports_used(service: dict[str, Any]) -> set[int]:
    """Container ports a service listens on: `ports`/`expose`, and its command's flags."""
    used: set[int] = set()
    for entry in [*service.get("ports", []), *service.get("expose", [])]:
        used.add(int(str(entry).split(":")[-1].split("/")[0]))
    cmd = words(service.get("command", []))
    for flag, value in pairwise(cmd):
        if flag in ("--port", "--metrics-port"):
            used.add(int(value))
        elif flag == "--listen" and value.startswith("tcp:"):
            used.add(int(value.rsplit(":", 1)[1]))
    return used


def test_compose_parses_with_the_five_services() -> None:
    """The compose file is valid YAML and runs exactly redis, store, api, prometheus, grafana."""
    assert set(services()) == {"redis", "store", "api", "prometheus", "grafana"}


def test_service_healthy_dependencies_have_healthchecks() -> None:
    """`condition: service_healthy` on a service without a healthcheck never starts anything."""
    for name, service in services().items():
        depends = service.get("depends_on", {})
        if isinstance(depends, list):
            continue  # short form: service_started only
        for target, spec in depends.items():
            assert target in services(), f"{name} depends on unknown service {target}"
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services()[target], (
                    f"{name} waits for {target} to be healthy, but {target} has no healthcheck"
                )


@cache
def cli_help(subcommand: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", subcommand, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"`duckcast {subcommand} --help` failed:\n{proc.stderr}"
    return proc.stdout


def test_deploy_commands_use_real_cli_flags() -> None:
    """Every `duckcast` subcommand and flag in compose and the Dockerfile exists in the CLI."""
    commands = duckcast_commands()
    assert words(services()["api"]["command"])[0] == "duckcast"
    assert {c[1] for c in commands} == {"serve", "store"}
    for cmd in commands:
        help_text = cli_help(cmd[1])
        for flag in (w for w in cmd[2:] if w.startswith("--")):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), (
                f"`duckcast {cmd[1]}` does not accept {flag}"
            )


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|s|m|h)", duration))


def test_api_stop_grace_outlasts_gunicorn_graceful_timeout() -> None:
    """Docker's SIGKILL comes after gunicorn's graceful timeout, so workers shut down cleanly."""
    conf = runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))
    grace = seconds(services()["api"].get("stop_grace_period", "10s"))
    assert grace > conf["graceful_timeout"]


def test_duckcast_env_vars_are_settings_fields() -> None:
    """Each DUCKCAST_* variable compose sets is a Settings field; a typo is silently ignored."""
    fields = {f"DUCKCAST_{name.upper()}" for name in Settings.model_fields}
    envs: list[str] = []
    for service in services().values():
        env = service.get("environment", {})
        names = [e.split("=", 1)[0] for e in env] if isinstance(env, list) else list(env)
        envs += [n for n in names if n.startswith("DUCKCAST_")]
    for op, args in dockerfile_instructions():
        if op == "ENV":
            envs += [m for m in re.findall(r"(\w+)=", args) if m.startswith("DUCKCAST_")]
    assert envs
    assert set(envs) <= fields, f"not Settings fields: {sorted(set(envs) - fields)}"


def test_prometheus_scrapes_ports_the_services_use() -> None:
    """Each scrape target is a compose service on a port that service listens on."""
    config = load_yaml(DEPLOY / "prometheus.yml")
    targets: list[tuple[str, int]] = []
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets.append((host, int(port)))
        for sd in job.get("dns_sd_configs", []):
            assert sd["type"] == "A"
            targets += [(name, int(sd["port"])) for name in sd["names"]]
    assert sorted(targets) == [("api", 8000), ("store", 9101)]
    for host, port in targets:
        assert port in ports_used(services()[host]), f"{host} does not listen on {port}"


def dashboard_exprs() -> list[Any]:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/duckcast.json").read_text())
    return [
        pytest.param(t["expr"], id=f"{p['title']}/{t['refId']}")
        for p in dashboard["panels"]
        for t in p.get("targets", [])
    ]


def metric_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that are series names, not functions or labels."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # string literals
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)  # label matchers, range selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", expr):
        followed_by_call = expr[match.end() :].lstrip().startswith("(")
        if not followed_by_call and match.group() not in PROMQL_KEYWORDS:
            names.add(match.group())
    return names


@pytest.mark.parametrize("expr", dashboard_exprs())
def test_dashboard_queries_use_exported_metrics(expr: str) -> None:
    """Every panel query names only series the service exports (histograms via _bucket etc.)."""
    names = metric_names(expr)
    assert names, f"no metric in {expr!r}"
    assert names <= EXPORTED_SERIES, f"unknown series {sorted(names - EXPORTED_SERIES)}"


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    """Panels point at the datasource uid Grafana provisions; otherwise they show no data."""
    provisioned = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
    uids = {ds["uid"] for ds in provisioned["datasources"]}
    dashboard = json.loads((DEPLOY / "grafana/dashboards/duckcast.json").read_text())
    for panel in dashboard["panels"]:
        for ref in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert ref["uid"] in uids, f"panel {panel['title']!r} uses {ref['uid']!r}"


def test_dockerfile_runs_serve_and_copies_runtime_files() -> None:
    """The image runs `duckcast serve` and holds the files the app reads outside the wheel."""
    assert dockerfile_cmd()[:2] == ["duckcast", "serve"]
    sources = dockerfile_copy_sources()
    assert {"protos", "deploy", "service", "pyproject.toml"} <= sources
    # pyproject's readme is the package metadata; setuptools would only warn if it were absent.
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    assert readme in sources


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    """Nothing the Dockerfile copies is excluded from the build context."""
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for source in dockerfile_copy_sources():
        assert source.split("/")[0] not in ignored, f".dockerignore excludes {source}"
