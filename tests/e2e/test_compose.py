"""docker-compose.yml, as written and with no environment, works: each service runs as the
process its `command` says (tests/e2e/compose.py maps what Docker would provide), and the
topology is proven from outside, the way an operator would check it: the api's own
healthcheck passes, a write goes through the published port, the DuckDB file is in the
declared volume, the store and api share one secret, Prometheus scrapes both targets with the
repository's config, and every Grafana panel's query returns data.

The six breaking edits of the deploy issue each make `prove` fail, for the reason expected:
`pytest -m compose_mutation tests/e2e/test_compose.py` (`make deploy-mutations`; about three
minutes, most of it waiting out compose's healthcheck bound, so not in `make test`).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from tests.conftest import wait_until
from tests.e2e.compose import ROOT, Topology, TopologyBroken, load_compose, running
from tests.sse import iter_events

pytestmark = pytest.mark.e2e

COMPOSE = (ROOT / "docker-compose.yml").read_text()
DASHBOARD = ROOT / "deploy/grafana/dashboards/duckcast.json"
SECRET_FILE = "DUCKCAST_SECRET_KEY_FILE"
# Grafana's $__rate_interval with the datasource's 5 s timeInterval: 4 x the scrape interval.
RATE_INTERVAL = "20s"


class Operator:
    """What an operator does against a running topology, each step an assertion."""

    def __init__(self, topology: Topology) -> None:
        self.t = topology
        host, port = topology.published("api", 8000)
        self.api = httpx.Client(base_url=f"http://{host}:{port}", timeout=10)
        self.item: dict[str, Any] | None = None

    def close(self) -> None:
        self.api.close()

    def api_healthy(self) -> None:
        """As `docker compose up --wait` would: the api's own healthcheck command passes."""
        self.t.wait_healthy("api")

    def ready_not_degraded(self, timeout: float = 15) -> None:
        """/readyz through the published port says `ready`: store and Redis both reached."""
        last = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.api.get("/readyz")
            if r.status_code == 200 and r.json()["status"] == "ready":
                return
            last = f"{r.status_code} {r.text}"
            time.sleep(0.2)
        raise TopologyBroken(f"/readyz is not `ready` after {timeout}s: {last}")

    def write_through_published_port(self) -> None:
        r = self.api.post("/api/register", json={"username": "ops", "password": "correct horse"})
        assert r.status_code == 201, r.text
        r = self.api.post("/api/login", json={"username": "ops", "password": "correct horse"})
        assert r.status_code == 200, r.text
        self.api.headers["Authorization"] = f"Bearer {r.json()['token']}"
        r = self.api.post("/api/items", json={"title": "through the published port"})
        assert r.status_code == 201, r.text
        self.item = r.json()
        r = self.api.get(f"/api/items/{self.item['id']}")
        assert r.status_code == 200 and r.json() == self.item, r.text

    def database_in_volume(self) -> Path:
        """The store's DuckDB file is in the volume compose declares for it (and nowhere else)."""
        store = self.t.services_spec["store"]
        volumes = [m.split(":")[0] for m in store.get("volumes", []) if ":" in m]
        found = sorted(self.t.workdir.rglob("duckcast.duckdb"))
        in_volumes = [p for p in found if any(self.t.volume_dir(v) in p.parents for v in volumes)]
        if not in_volumes or found != in_volumes:
            raise TopologyBroken(f"DuckDB file not in the declared volume {volumes}: {found}")
        return in_volumes[0]

    def one_secret(self) -> Path:
        """The store and the api read the same secret file, which the secrets service wrote."""
        paths = {
            name: self.t.host_path(name, self.t.services_spec[name]["environment"][SECRET_FILE])
            for name in ("store", "api")
        }
        if len(set(paths.values())) != 1:
            raise TopologyBroken(f"store and api read different secrets: {paths}")
        path = paths["store"]
        if not path.is_file() or len(path.read_text().strip()) < 32:
            raise TopologyBroken(f"no secret of at least 32 characters in {path}")
        return path

    def prove(self) -> None:
        """Everything `docker compose up` promises, short of Prometheus's first scrapes."""
        self.api_healthy()
        self.ready_not_degraded()
        self.write_through_published_port()
        self.database_in_volume()
        self.one_secret()


class Prometheus:
    def __init__(self, topology: Topology) -> None:
        host, port = topology.published("prometheus", 9090)
        self.http = httpx.Client(base_url=f"http://{host}:{port}", timeout=10)
        self.traffic_from = time.time()

    def ready(self) -> bool:
        """Prometheus answers /-/ready (compose gives it no healthcheck: it may still be
        starting when the api is healthy, and the forwarder then closes the connection)."""
        try:
            return self.http.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = self.http.get("/api/v1/query", params={"query": expr})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def query_range(self, expr: str, start: float, step: float = 5) -> list[dict[str, Any]]:
        params = {"query": expr, "start": start, "end": time.time(), "step": step}
        r = self.http.get("/api/v1/query_range", params=params)
        assert r.status_code == 200, r.text
        result: list[dict[str, Any]] = r.json()["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Topology, Operator]]:
    """`docker compose up` with no environment, then an operator's write and a subscriber."""
    workdir = Path(tmp_path_factory.mktemp("compose"))
    with running(load_compose(COMPOSE, {}), workdir) as topology:
        operator = Operator(topology)
        try:
            operator.prove()
            yield topology, operator
        finally:
            operator.close()


@pytest.fixture(scope="module")
def prometheus(deployed: tuple[Topology, Operator]) -> Iterator[Prometheus]:
    """Prometheus with traffic of every kind the dashboard shows (logins, reads, writes, a 404,
    a stream) between its scrapes: after a first scrape of both targets, and until two more."""
    topology, operator = deployed
    prom = Prometheus(topology)

    def scraped(times: int, since: float) -> bool:
        """Both targets scraped `times` times since `since` (a rate needs a sample before
        the traffic and one after it inside its window)."""
        window = max(1, int(time.time() - since))
        ups = prom.query(f'count_over_time(up{{job=~"api|store"}}[{window}s]) >= {times}')
        return {s["metric"]["job"] for s in ups} == {"api", "store"}

    wait_until(prom.ready, timeout=60, interval=0.2)
    started = time.time() - 300
    wait_until(lambda: scraped(1, started), timeout=60, interval=0.5)
    prom.traffic_from = time.time()
    r = operator.api.post("/api/login", json={"username": "ops", "password": "correct horse"})
    assert r.status_code == 200, r.text
    for n in range(5):
        assert operator.api.post("/api/items", json={"title": f"n{n}"}).status_code == 201
        assert operator.api.get("/api/items").status_code == 200
        assert operator.api.get("/api/items/987654").status_code == 404
    with connect_sse(operator.api, "GET", "/api/events") as source:
        assert source.response.status_code == 200
        events = iter_events(source)
        assert next(events).event == "connected"
        # a change delivered live, so the delivery-lag histogram has an observation
        assert operator.api.post("/api/items", json={"title": "live"}).status_code == 201
        assert any(event.event == "item_created" for event in events)
    traffic_end = time.time()
    wait_until(lambda: scraped(2, traffic_end), timeout=60, interval=0.5)
    yield prom
    prom.http.close()


def test_api_is_healthy_through_its_own_healthcheck(deployed: tuple[Topology, Operator]) -> None:
    """compose's api healthcheck command exits 0, and /readyz via the published port says
    `ready` (not `degraded`: the Redis subscription is live)."""
    _, operator = deployed
    operator.api_healthy()
    operator.ready_not_degraded()


def test_a_write_goes_through_the_published_port(deployed: tuple[Topology, Operator]) -> None:
    """The API is published on the host's port 8000, and a created item reads back."""
    topology, operator = deployed
    assert topology.published("api", 8000)[1] == 8000
    assert operator.item is not None
    r = operator.api.get(f"/api/items/{operator.item['id']}")
    assert r.status_code == 200 and r.json() == operator.item


def test_the_database_is_in_the_declared_volume(deployed: tuple[Topology, Operator]) -> None:
    """The DuckDB file is in the store's named volume (so it outlives the container), and no
    other service's filesystem holds one."""
    topology, operator = deployed
    path = operator.database_in_volume()
    assert path.parent == topology.volume_dir("duckdb-data")


def test_store_and_api_share_one_generated_secret(deployed: tuple[Topology, Operator]) -> None:
    """The secrets service wrote one 64-hex-character secret (mode 0600) that the store and
    the api both read; and Grafana's generated admin password where Grafana reads it."""
    topology, operator = deployed
    path = operator.one_secret()
    assert re.fullmatch(r"[0-9a-f]{64}", path.read_text())
    assert path.stat().st_mode & 0o777 == 0o600
    grafana_env = topology.services_spec["grafana"]["environment"]
    password = topology.host_path("grafana", grafana_env["GF_SECURITY_ADMIN_PASSWORD__FILE"])
    assert len(password.read_text()) == 64, "no generated Grafana admin password"
    assert grafana_env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


def test_prometheus_scrapes_both_targets_with_the_repo_config(prometheus: Prometheus) -> None:
    """Prometheus, on the repository's prometheus.yml (Docker DNS mapped), has the api and the
    store up, the api's backplane connected, the outbox drained, and the alert rules loaded."""
    ups = {s["metric"]["job"]: s["value"][1] for s in prometheus.query("up")}
    assert ups == {"api": "1", "store": "1"}
    assert prometheus.value("min(duckcast_backplane_connected)") == 1
    assert prometheus.value('max(duckcast_outbox_backlog{job="store"})') == 0
    # the operator's 6 items and the 1 delivered live
    assert prometheus.value('max(duckcast_store_seq{job="store"})') == 7
    assert prometheus.value('count(process_resident_memory_bytes{job="api"})') == 2  # workers
    assert prometheus.value('count(process_resident_memory_bytes{job="store"})') == 1
    assert prometheus.value('count(duckcast_build_info{job="store"})') == 1
    rules = prometheus.http.get("/api/v1/rules").json()["data"]["groups"]
    assert {rule["name"] for group in rules for rule in group["rules"]} >= {
        "DuckcastHighErrorRatio",
        "DuckcastBackplaneDown",
        "DuckcastStoreDown",
    }


def test_both_targets_pass_promtool_check_metrics(deployed: tuple[Topology, Operator]) -> None:
    """The api's and the store's /metrics pass Prometheus's own lint (names, types, units)."""
    topology, operator = deployed
    store = httpx.get(f"http://{topology.addresses['store']}:9101/metrics", timeout=10)
    for body in (operator.api.get("/metrics").text, store.text):
        assert "duckcast_build_info" in body
        lint = subprocess.run(
            ["promtool", "check", "metrics"], input=body, capture_output=True, text=True
        )
        assert lint.returncode == 0, lint.stdout + lint.stderr


def dashboard_queries() -> list[Any]:
    dashboard = json.loads(DASHBOARD.read_text())
    params = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            key = f"{panel['title']}/{target['refId']}"
            params.append(pytest.param(target["expr"], id=key))
    return params


@pytest.mark.parametrize("expr", dashboard_queries())
def test_every_dashboard_query_returns_data(prometheus: Prometheus, expr: str) -> None:
    """The panel's query, as Grafana runs it over the time since the traffic began (variables
    at "All", its rate interval), returns at least one number (not only NaN) from the real
    Prometheus."""
    concrete = (
        expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$job", ".*")
        .replace("$instance", ".*")
    )
    result = prometheus.query_range(concrete, start=prometheus.traffic_from - 5)
    assert result, f"no data for {concrete}"
    values = [float(v) for series in result for _, v in series["values"]]
    assert any(not math.isnan(v) for v in values), f"only NaN for {concrete}: {result}"


# -- the six edits that must break it --------------------------------------------------------

MUTATIONS = {
    # the api looks for the store on a port the store does not listen on
    "wrong store port": (
        "DUCKCAST_STORE_URL: tcp:store:7070",
        "DUCKCAST_STORE_URL: tcp:store:7071",
        r"api (never became healthy|exited).*store",
    ),
    "wrong redis port": (
        "REDIS_URL: redis://redis:6379/0",
        "REDIS_URL: redis://redis:6380/0",
        r"not `ready`.*backplane",
    ),
    "healthcheck on a 404 path": (
        "urlopen('http://127.0.0.1:8000/readyz'",
        "urlopen('http://127.0.0.1:8000/ready'",
        r"api never became healthy.*404",
    ),
    "database outside the volume": (
        "      DUCKCAST_DATA_DIR: /data\n    volumes:\n      - duckdb-data:/data",
        "      DUCKCAST_DATA_DIR: /var/lib/duckcast\n    volumes:\n      - duckdb-data:/data",
        r"not in the declared volume",
    ),
    "too-short secret": (
        "secrets.token_hex(32)",
        "secrets.token_hex(8)",
        r"store exited.*32",
    ),
    "no published port": (
        '    ports:\n      - "${API_PORT:-8000}:8000"\n',
        "",
        r"api publishes no port",
    ),
}


@pytest.mark.compose_mutation
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_each_breaking_edit_fails_the_deploy_test(tmp_path: Path, mutation: str) -> None:
    """The edit applies to docker-compose.yml as written, and the same proof then fails, for
    the reason that edit should cause."""
    old, new, reason = MUTATIONS[mutation]
    assert COMPOSE.count(old) == 1, f"the edit no longer applies: {old!r}"
    model = load_compose(COMPOSE.replace(old, new), {})
    with pytest.raises(TopologyBroken) as broken, running(model, tmp_path) as topology:
        operator = Operator(topology)
        try:
            operator.prove()
        finally:
            operator.close()
    assert re.search(reason, str(broken.value), re.DOTALL), str(broken.value)[-3000:]
