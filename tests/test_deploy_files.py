"""The deployment files (Dockerfile, compose, .env.example, Prometheus, alerts, Grafana) agree
with the code and keep the promises an operator relies on. No Docker engine is needed: these
read the files and check them against the real CLI, Settings, metrics and promtool. Whether
the topology actually works is tests/e2e/test_compose.py's job.
"""

from __future__ import annotations

import fnmatch
import json
import re
import runpy
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from prometheus_client import REGISTRY

from service import gunicorn_conf
from service.config import Settings
from service.metrics import HTTP_BUCKETS
from tests.e2e.compose import (
    INTERPOLATION,
    MissingVariable,
    environment_of,
    load_compose,
    ports_of,
    words,
)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset",
}  # fmt: skip


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@cache
def compose() -> dict[str, Any]:
    """The compose model as `docker compose` sees it with no environment at all."""
    return load_compose(COMPOSE_TEXT, {})


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]  # type: ignore[no-any-return]


# -- compose -----------------------------------------------------------------------------


def test_compose_needs_no_environment_for_any_subcommand() -> None:
    """Every compose subcommand (up, down, ps, logs) interpolates the file first: with no
    variable set it must succeed, so no `${VAR:?}`/`${VAR?}`; and interpolation works as
    compose's does (the check can fail: a required variable does raise)."""
    compose()
    with pytest.raises(MissingVariable):
        load_compose("x: ${NEEDED:?set it}", {})
    assert load_compose("x: ${A:-d} ${B-e} $$1", {"B": ""}) == {"x": "d  $1"}


def test_compose_runs_the_six_services_and_waits_for_health() -> None:
    """redis, the one-shot secrets writer, store, api, prometheus, grafana; a service waited
    for as healthy has a healthcheck, and one waited for as completed is a one-shot."""
    assert set(services()) == {"redis", "secrets", "store", "api", "prometheus", "grafana"}
    for name, service in services().items():
        depends = service.get("depends_on", {})
        for target, spec in depends.items() if isinstance(depends, dict) else []:
            assert target in services(), f"{name} depends on unknown service {target}"
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services()[target], f"{target} has no healthcheck"
            if spec.get("condition") == "service_completed_successfully":
                assert services()[target].get("restart") == "no", f"{target} would restart"


def test_api_has_a_fixed_public_port_and_the_consoles_are_local() -> None:
    """The API is published on the host's 8000; Prometheus and Grafana only on 127.0.0.1;
    the store and Redis not at all."""
    published = {name: ports_of(s) for name, s in services().items()}
    assert [(p.host_ip, p.published, p.target) for p in published["api"]] == [(None, 8000, 8000)]
    for name in ("prometheus", "grafana"):
        assert published[name] and all(p.host_ip == "127.0.0.1" for p in published[name]), name
        assert len(published[name]) == len(services()[name]["ports"])  # no port left unbound
    for name in ("redis", "store", "secrets"):
        assert "ports" not in services()[name], f"{name} must not be reachable from outside"


def test_grafana_has_no_default_password_and_no_anonymous_access() -> None:
    """Anonymous off, sign-up off, and the admin password read from the file the secrets
    service writes (GRAFANA_ADMIN_PASSWORD, or a generated one), never Grafana's admin/admin."""
    env = environment_of(services()["grafana"])
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    password_file = env["GF_SECURITY_ADMIN_PASSWORD__FILE"]
    secrets_code = " ".join(words(services()["secrets"]["command"]))
    assert Path(password_file).name in secrets_code
    mount = password_file.rsplit("/", 1)[0]
    grafana_volumes = [v.split(":")[0] for v in services()["grafana"]["volumes"] if mount in v]
    secrets_volumes = [v.split(":")[0] for v in services()["secrets"]["volumes"]]
    assert grafana_volumes and grafana_volumes[0] in secrets_volumes


def test_env_example_documents_every_variable_compose_reads() -> None:
    """.env.example names exactly the variables docker-compose.yml interpolates, each with
    the default compose uses when it is unset."""
    defaults = {
        m.group("name"): m.group("arg") or ""
        for m in INTERPOLATION.finditer(COMPOSE_TEXT)
        if m.group("name")
    }
    example: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            example[name.strip()] = value.strip()
    assert example == defaults


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


def duckcast_commands() -> list[list[str]]:
    cmds = [words(s["command"]) for s in services().values() if "command" in s]
    cmds.append(dockerfile_cmd())
    return [c for c in cmds if c[0] == "duckcast"]


def test_deploy_commands_use_real_cli_flags() -> None:
    """Every `duckcast` subcommand and flag in compose and the Dockerfile exists in the CLI."""
    commands = duckcast_commands()
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
    grace = seconds(services()["api"].get("stop_grace_period", "10s"))
    assert grace > gunicorn_conf.graceful_timeout


def test_ops_gunicorn_file_yields_the_package_settings() -> None:
    """deploy/gunicorn.conf.py (for running gunicorn by hand, and the benchmark's ceiling)
    gives gunicorn exactly the settings `duckcast serve --workers` uses from the package."""
    from gunicorn.config import Config

    known = set(Config().settings)
    ops = {k: v for k, v in runpy.run_path(str(DEPLOY / "gunicorn.conf.py")).items() if k in known}
    package = {k: v for k, v in vars(gunicorn_conf).items() if k in known}
    assert {"worker_class", "graceful_timeout", "logconfig_dict", "on_starting"} <= set(package)
    assert ops == package


def test_duckcast_env_vars_are_settings_fields() -> None:
    """Each DUCKCAST_* variable compose or the image sets is a Settings field; a typo would be
    silently ignored."""
    fields = {f"DUCKCAST_{name.upper()}" for name in Settings.model_fields}
    envs = [n for s in services().values() for n in environment_of(s) if n.startswith("DUCKCAST_")]
    for op, args in dockerfile_instructions():
        if op == "ENV":
            envs += [m for m in re.findall(r"(\w+)=", args) if m.startswith("DUCKCAST_")]
    assert "DUCKCAST_LOG_FORMAT" in envs
    assert set(envs) <= fields, f"not Settings fields: {sorted(set(envs) - fields)}"


# -- the image -----------------------------------------------------------------------------


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


def dockerfile_copy_sources() -> list[str]:
    sources = []
    for op, args in dockerfile_instructions():
        if op == "COPY" and "--from=" not in args:
            parts = [p for p in args.split() if not p.startswith("--")]
            sources += [p.removeprefix("./").rstrip("/") for p in parts[:-1]]
    return sources


def test_image_is_pinned_multi_stage_non_root_and_healthchecked() -> None:
    """Every FROM names an exact Python version (or a digest); a build stage and a final stage;
    the final stage runs as a numeric non-root user, has a HEALTHCHECK, declares no VOLUME
    (compose names its volumes; an anonymous one per replica would pile up) and runs
    `duckcast serve` in exec form."""
    ops = dockerfile_instructions()
    bases = [args.split()[0] for op, args in ops if op == "FROM"]
    assert len(bases) >= 2, "not multi-stage"
    for base in bases:
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*|[\w./-]+@sha256:[0-9a-f]{64}", base), (
            f"base image not pinned: {base}"
        )
    final = ops[max(i for i, (op, _) in enumerate(ops) if op == "FROM") :]
    users = [args for op, args in final if op == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), "runs as root"
    assert any(op == "HEALTHCHECK" for op, _ in final)
    assert not any(op == "VOLUME" for op, _ in ops)
    assert dockerfile_cmd()[:2] == ["duckcast", "serve"]


def test_locked_dependencies_are_installed_before_the_code() -> None:
    """The lock is copied and installed (with hashes) before the package's code is copied, so a
    code change reuses the dependency layer; the runtime files come with the package."""
    ops = [(op, args) for op, args in dockerfile_instructions() if op in ("COPY", "RUN")]
    lock_install = next(
        i for i, (op, a) in enumerate(ops) if op == "RUN" and "--require-hashes" in a
    )
    code_copy = next(i for i, (op, a) in enumerate(ops) if op == "COPY" and "service" in a)
    lock_copy = next(i for i, (op, a) in enumerate(ops) if op == "COPY" and "requirements" in a)
    assert lock_copy < lock_install < code_copy
    assert not {"protos", "deploy"} & set(dockerfile_copy_sources()), (
        "runtime files belong in the package"
    )


def test_lock_pins_every_dependency_with_hashes() -> None:
    """deploy/requirements.lock (`make lock`) pins each of pyproject's dependencies at a
    version it allows, every pin with hashes."""
    lock = (DEPLOY / "requirements.lock").read_text()
    pins = dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==([^\s\\;]+)", lock, re.MULTILINE))
    entries = re.split(r"\n(?=[a-z0-9])", lock.strip())
    assert all("--hash=sha256:" in e for e in entries if not e.startswith("#"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{name} is not in the lock"
        assert req.specifier.contains(pins[name]), f"lock pins {name}=={pins[name]}, not {req}"


def test_dockerignore_sends_only_what_the_dockerfile_copies() -> None:
    """The build context excludes everything but what the Dockerfile copies (no .git, data,
    venv), and excludes nothing it copies."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        result = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            body = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, body) or path.startswith(body + "/"):
                result = not negate
        return result

    for source in dockerfile_copy_sources():
        assert not ignored(source), f".dockerignore excludes {source}"
    for path in (".git", "data", ".venv", "tests", "loadtests", "docker-compose.yml"):
        assert ignored(path), f".dockerignore sends {path}"


# -- Prometheus, alerts, Grafana --------------------------------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed (.ci/run installs Debian's prometheus)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


def test_prometheus_config_and_alert_rules_pass_promtool() -> None:
    """`promtool check config` (which also checks the rule files it names) passes."""
    done = promtool("check", "config", str(DEPLOY / "prometheus/prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "alerts.yml" in done.stdout


def test_alert_rules_unit_tests_pass() -> None:
    """`promtool test rules`: each alert fires on the series that should page, and not on its
    neighbour (deploy/prometheus/alerts_test.yml)."""
    done = promtool("test", "rules", str(DEPLOY / "prometheus/alerts_test.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    tested = set(
        re.findall(r"alertname: (\w+)", (DEPLOY / "prometheus/alerts_test.yml").read_text())
    )
    rules = load_yaml(DEPLOY / "prometheus/alerts.yml")["groups"][0]["rules"]
    assert tested == {rule["alert"] for rule in rules}, "an alert without a unit test"


def test_prometheus_scrapes_ports_the_services_use() -> None:
    """Each scrape target is a compose service on a port that service listens on."""
    config = load_yaml(DEPLOY / "prometheus/prometheus.yml")
    targets: list[tuple[str, int]] = []
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets.append((host, int(port)))
        for sd in job.get("dns_sd_configs", []):
            targets += [(name, int(sd["port"])) for name in sd["names"]]
    assert sorted(targets) == [("api", 8000), ("store", 9101)]
    for host, port in targets:
        cmd = words(services()[host].get("command", []))
        listening = {int(v.rsplit(":", 1)[-1]) for f, v in pairwise(cmd) if f.startswith("--")
                     and (f.endswith("port") or v.startswith("tcp:"))}  # fmt: skip
        assert port in listening, f"{host} does not listen on {port}"


def exported_series() -> set[str]:
    """Every series name the service can export (histograms as _bucket/_sum/_count, process_*
    included), and Prometheus's own `up`."""
    names = {"up"}
    for family in REGISTRY.collect():
        names |= {family.name} | {sample.name for sample in family.samples}
        if family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        elif family.type == "counter":
            names.add(family.name + "_total")
    return names


def metric_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that are series names, not functions or labels."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # string literals
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)  # label matchers, range selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\b\d+(?:\.\d+)?\b", "", expr)  # numbers
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", expr):
        followed_by_call = expr[match.end() :].lstrip().startswith("(")
        if not followed_by_call and match.group() not in PROMQL_KEYWORDS:
            names.add(match.group())
    return names


def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana/dashboards/duckcast.json").read_text())  # type: ignore[no-any-return]


def promql() -> list[Any]:
    exprs = [
        pytest.param(t["expr"], id=f"panel {p['title']}/{t['refId']}")
        for p in dashboard()["panels"]
        for t in p.get("targets", [])
    ]
    for rule in load_yaml(DEPLOY / "prometheus/alerts.yml")["groups"][0]["rules"]:
        exprs.append(pytest.param(rule["expr"], id=f"alert {rule['alert']}"))
    return exprs


@pytest.mark.parametrize("expr", promql())
def test_dashboard_and_alert_queries_use_exported_metrics(expr: str) -> None:
    """Every panel and alert names only series service/metrics.py exports (histograms via
    _bucket etc.), so a renamed metric breaks a test here, not a dashboard."""
    names = metric_names(expr)
    assert names, f"no metric in {expr!r}"
    unknown = names - exported_series()
    assert not unknown, f"unknown series {sorted(unknown)}"


def test_dashboard_filters_every_query_by_job_and_instance() -> None:
    """The dashboard has `job` and `instance` variables (scaled replicas, the store) and every
    panel query is narrowed by both."""
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert set(variables) == {"job", "instance"}
    assert "$job" in variables["instance"]["definition"]
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            for selector in re.findall(r"\w+\{[^}]*\}", target["expr"]):
                assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, (
                    panel["title"],
                    selector,
                )


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    """Panels point at the datasource uid Grafana provisions; otherwise they show no data."""
    provisioned = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
    uids = {ds["uid"] for ds in provisioned["datasources"]}
    for panel in dashboard()["panels"]:
        for ref in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert ref["uid"] in uids, f"panel {panel['title']!r} uses {ref['uid']!r}"


def test_http_latency_buckets_reach_past_the_store_and_gunicorn_deadlines() -> None:
    """A request that waits out the store deadline (5 s) or gunicorn's timeout lands in a
    bucket of its own, not in +Inf next to a 5 s one."""
    assert max(HTTP_BUCKETS) >= gunicorn_conf.timeout
    assert max(HTTP_BUCKETS) > Settings().store_timeout_seconds
