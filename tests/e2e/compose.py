"""docker-compose.yml run as plain processes: there is no Docker engine on these machines.

Each service runs from its own `command`, `environment` (interpolated like compose does, with
the given variables only), `volumes`, `healthcheck`, `depends_on` and `ports`. What Docker
would provide is replaced, and only that:

- Network: every service gets its own loopback address (127.X.Y.n, random per run), and a
  service name followed by a port (`redis:6379`, `tcp:store:7070`) becomes that address.
  Inside a service, 0.0.0.0, 127.0.0.1, localhost and an empty host (`:9090`) are its own
  address. Docker's DNS service discovery in prometheus.yml (`dns_sd_configs` type A) becomes
  the same targets as static ones.
- Published ports: a TCP forwarder on the "host" address (127.X.Y.1) at the published port
  to the service's address at the container port. No `ports:`, no way in.
- Volumes: a named volume is a directory shared by every service that mounts it; a bind mount
  is a copy of the repository path (names rewritten as above). An absolute container path in
  a command, healthcheck or environment value maps through the mounts; outside every mount it
  lands in the service's own throw-away filesystem (which no other service sees).
- Images: the duckcast image's ENV and WORKDIR come from the Dockerfile's last stage, its
  `duckcast` and `python` are the project's; `redis-server`/`redis-cli` and `prometheus` are
  the machine's (Debian's), told the address to bind or reach.
- Start order: `depends_on` conditions (`service_healthy` polls the healthcheck command with
  compose's start_period + retries x interval as the bound; `service_completed_successfully`
  waits for exit 0). Grafana cannot run here: tests evaluate its dashboard's queries instead.

A failure (a process that exits, a healthcheck that never passes) raises `TopologyBroken`
with the service's log tail.
"""

from __future__ import annotations

import contextlib
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loadtests.harness import stop_group

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
INTERPOLATION = re.compile(r"\$(?:\$|\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")
ABSOLUTE_PATH = re.compile(r"(?<![\w:/.$-])(/[\w.-]+(?:/[\w.-]*)*)")
OWN_ADDRESS = re.compile(r"(?<![\w.-])(?:0\.0\.0\.0|127\.0\.0\.1|localhost)(?![\w.-])")
EMPTY_HOST = re.compile(r"(?<==):(?=\d)")


class TopologyBroken(AssertionError):
    """The deployment does not come up or does not work as declared."""


class MissingVariable(ValueError):
    pass


# -- compose file -------------------------------------------------------------------------


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable interpolation: ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error}, $$. Every subcommand (`up`, `down`, `ps`, `logs`) does this
    first, so a required variable that is unset breaks all of them."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        if name is None:
            return "$"
        current = env.get(name)
        unset = current is None or (current == "" and op is not None and op.startswith(":"))
        if op is not None and op.endswith("?") and unset:
            raise MissingVariable(f"required variable {name} is missing: {arg}")
        if op is not None and op.endswith("-") and unset:
            return str(arg)
        return current or ""

    return INTERPOLATION.sub(substitute, value)


def load_compose(text: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    model: dict[str, Any] = interpolate(yaml.safe_load(text), env or {})
    return model


def words(command: str | list[str]) -> list[str]:
    import shlex

    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


@dataclass
class Port:
    host_ip: str | None
    published: int
    target: int


def ports_of(service: dict[str, Any]) -> list[Port]:
    out = []
    for entry in service.get("ports", []):
        parts = str(entry).split("/")[0].split(":")
        if len(parts) == 1:
            continue  # container port only: Docker picks the host port
        host_ip = parts[0] if len(parts) == 3 else None
        out.append(Port(host_ip, int(parts[-2]), int(parts[-1])))
    return out


@dataclass
class Mount:
    source: str  # a volume name, or a path relative to the compose file
    target: str
    named: bool


def mounts_of(service: dict[str, Any]) -> list[Mount]:
    out = []
    for entry in service.get("volumes", []):
        source, target = str(entry).split(":")[:2]
        out.append(Mount(source, target, named=not source.startswith((".", "/"))))
    return out


def dockerfile_image() -> tuple[dict[str, str], str]:
    """The last stage's ENV and WORKDIR."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    workdir = "/"
    for line in text.splitlines():
        op, _, args = line.strip().partition(" ")
        if op == "FROM":
            env, workdir = {}, "/"
        elif op == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", args))
        elif op == "WORKDIR":
            workdir = args.strip()
    env.pop("PATH", None)  # the image's venv: here, the project's
    return env, workdir


# -- processes ----------------------------------------------------------------------------


class Forwarder:
    """A published port: accepts on the host address, pipes each connection to the target."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(listen)
        self.open: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        with client:
            try:
                upstream = socket.create_connection(self.target, 5)
            except OSError:
                return  # as Docker's proxy does: the client sees the connection close
            with upstream:
                self.open |= {client, upstream}
                back = threading.Thread(target=self._pipe, args=(upstream, client), daemon=True)
                back.start()
                self._pipe(client, upstream)
                back.join()
                self.open -= {client, upstream}

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.server.close()
        for sock in list(self.open):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@dataclass
class Service:
    name: str
    spec: dict[str, Any]
    address: str
    logdir: Path
    proc: subprocess.Popen[bytes] | None = None
    forwarders: list[Forwarder] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.logdir / f"{self.name}.log"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        for forwarder in self.forwarders:
            forwarder.close()
        if self.proc is None:
            return
        stop_group(self.proc.pid, grace=20)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def seconds(duration: str | None, default: float) -> float:
    if duration is None:
        return default
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|s|m|h)", duration))


class Topology:
    """The services of one compose model, started in dependency order as local processes."""

    def __init__(self, model: dict[str, Any], workdir: Path, run: list[str] | None = None) -> None:
        self.model = model
        self.workdir = workdir
        self.services_spec: dict[str, dict[str, Any]] = model["services"]
        self.run = run or [n for n in self.services_spec if n != "grafana"]
        base = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
        self.host = f"{base}.1"  # where published ports are
        self.addresses = {name: f"{base}.{i + 2}" for i, name in enumerate(self.services_spec)}
        self.services = {
            name: Service(name, spec, self.addresses[name], workdir)
            for name, spec in self.services_spec.items()
        }
        self.image_env, self.image_workdir = dockerfile_image()
        names = "|".join(map(re.escape, sorted(self.services_spec, key=len, reverse=True)))
        self._service_host = re.compile(rf"(?<![\w.-])({names})(?=:\d)")

    # -- the mapping ----------------------------------------------------------------------

    def volume_dir(self, name: str) -> Path:
        return self.workdir / "volumes" / name

    def rootfs(self, service: str) -> Path:
        return self.workdir / "rootfs" / service

    def host_path(self, service: str, container_path: str) -> Path:
        """Where a container path of `service` is on this machine (through its mounts)."""
        best: Mount | None = None
        for mount in mounts_of(self.services_spec[service]):
            inside = container_path == mount.target or container_path.startswith(
                mount.target.rstrip("/") + "/"
            )
            if inside and (best is None or len(mount.target) > len(best.target)):
                best = mount
        if best is None:
            return self.rootfs(service) / container_path.lstrip("/")
        rest = container_path[len(best.target) :].lstrip("/")
        base = self.volume_dir(best.source) if best.named else self.bind_copy(best.source)
        return base / rest if rest else base

    def bind_copy(self, source: str) -> Path:
        """A bind-mounted repository path, copied with service names mapped (Docker DNS)."""
        copy = self.workdir / "binds" / source.strip("./").replace("/", "_")
        if not copy.exists():
            original = ROOT / source
            if original.is_dir():
                shutil.copytree(original, copy)
            else:
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(original, copy)
            for path in [copy] if copy.is_file() else copy.rglob("*.yml"):
                path.write_text(self.rewrite_config(path.read_text()))
        return copy

    def rewrite_config(self, text: str) -> str:
        config = yaml.safe_load(text)
        if isinstance(config, dict):
            for job in config.get("scrape_configs", []):
                for sd in job.pop("dns_sd_configs", []):
                    assert sd.get("type") == "A", sd
                    targets = [f"{name}:{sd['port']}" for name in sd["names"]]
                    job.setdefault("static_configs", []).append({"targets": targets})
            text = yaml.safe_dump(config, sort_keys=False)
        return self.map_names(text)

    def map_names(self, text: str) -> str:
        return self._service_host.sub(lambda m: self.addresses[m.group(1)], text)

    def map_value(self, service: str, value: str) -> str:
        """Service names, the service's own address, and container paths, in one string."""
        value = self.map_names(value)
        value = OWN_ADDRESS.sub(self.addresses[service], value)
        value = EMPTY_HOST.sub(self.addresses[service] + ":", value)
        return ABSOLUTE_PATH.sub(lambda m: str(self.host_path(service, m.group(1))), value)

    def is_duckcast_image(self, spec: dict[str, Any]) -> bool:
        return "build" in spec or str(spec.get("image", "")).startswith("duckcast")

    def argv(self, service: str, command: list[str]) -> list[str]:
        """A container command as a local one: the image's binaries replaced by ours."""
        spec = self.services_spec[service]
        args = [self.map_value(service, a) for a in command]
        image = str(spec.get("image", ""))
        if self.is_duckcast_image(spec):
            exe = {"duckcast": str(VENV_BIN / "duckcast"), "python": sys.executable}
            return [exe.get(args[0], args[0]), *args[1:]]
        if image.startswith("redis"):
            if args[0] == "redis-server":
                rootfs = self.rootfs(service)
                return [*args, "--bind", self.addresses[service], "--dir", str(rootfs)]
            if args[0] == "redis-cli":
                return [args[0], "-h", self.addresses[service], *args[1:]]
        if image.startswith("prom/prometheus"):
            return ["prometheus", *args]  # the image's entrypoint
        return args

    def env(self, service: str) -> dict[str, str]:
        spec = self.services_spec[service]
        env = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        if self.is_duckcast_image(spec):
            env.update({k: self.map_value(service, v) for k, v in self.image_env.items()})
        env.update({k: self.map_value(service, v) for k, v in environment_of(spec).items()})
        return env

    def cwd(self, service: str) -> Path:
        spec = self.services_spec[service]
        workdir = self.image_workdir if self.is_duckcast_image(spec) else "/"
        path = self.host_path(service, workdir)
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- running ----------------------------------------------------------------------------

    def start(self) -> None:
        for name in self.services_spec:
            self.rootfs(name).mkdir(parents=True, exist_ok=True)
            for mount in mounts_of(self.services_spec[name]):
                if mount.named:
                    self.volume_dir(mount.source).mkdir(parents=True, exist_ok=True)
                self.host_path(name, mount.target).mkdir(parents=True, exist_ok=True)
        for name in self.order():
            self._wait_for_dependencies(name)
            self._start(name)

    def order(self) -> list[str]:
        done: list[str] = []

        def visit(name: str) -> None:
            if name in done:
                return
            for dep in self.depends_on(name):
                visit(dep)
            done.append(name)

        for name in self.run:
            visit(name)
        return done

    def depends_on(self, name: str) -> dict[str, str]:
        deps = self.services_spec[name].get("depends_on", {})
        if isinstance(deps, list):
            return dict.fromkeys(deps, "service_started")
        return {k: v.get("condition", "service_started") for k, v in deps.items()}

    def _start(self, name: str) -> None:
        service = self.services[name]
        spec = service.spec
        command = words(spec.get("command", []))
        if not command:
            raise TopologyBroken(f"{name} has no command to run here")
        with open(service.log_path, "ab") as log:
            service.proc = subprocess.Popen(
                self.argv(name, command),
                env=self.env(name),
                cwd=self.cwd(name),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        for port in ports_of(spec):
            target = (service.address, port.target)
            service.forwarders.append(Forwarder((self.host, port.published), target))

    def _wait_for_dependencies(self, name: str) -> None:
        for dep, condition in self.depends_on(name).items():
            if condition == "service_healthy":
                self.wait_healthy(dep)
            elif condition == "service_completed_successfully":
                self.wait_completed(dep)
            elif not self.services[dep].running():
                raise TopologyBroken(f"{dep} is not running:\n{self.services[dep].log_tail()}")

    def wait_completed(self, name: str, timeout: float = 60) -> None:
        service = self.services[name]
        assert service.proc is not None
        try:
            code = service.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TopologyBroken(f"{name} did not complete within {timeout}s") from None
        if code != 0:
            raise TopologyBroken(f"{name} exited with {code}:\n{service.log_tail()}")

    def healthcheck(self, name: str) -> subprocess.CompletedProcess[bytes]:
        test = words(self.services_spec[name]["healthcheck"]["test"])
        kind, command = test[0], test[1:]
        if kind == "CMD-SHELL":
            argv = ["sh", "-c", self.map_value(name, " ".join(command))]
        else:
            assert kind == "CMD", test
            argv = self.argv(name, command)
        return subprocess.run(
            argv, env=self.env(name), cwd=self.cwd(name), capture_output=True, timeout=30
        )

    def wait_healthy(self, name: str) -> None:
        """Healthy when the healthcheck command exits 0; broken when the process exits, or
        after compose's own bound (start_period + retries x interval) without success."""
        check = self.services_spec[name].get("healthcheck")
        if check is None:
            raise TopologyBroken(f"{name} has no healthcheck, yet others wait for it healthy")
        bound = seconds(check.get("start_period"), 0) + seconds(check.get("interval"), 30) * int(
            check.get("retries", 3)
        )
        deadline = time.monotonic() + bound
        service = self.services[name]
        last = b""
        while time.monotonic() < deadline:
            if not service.running():
                raise TopologyBroken(f"{name} exited:\n{service.log_tail()}")
            result = self.healthcheck(name)
            if result.returncode == 0:
                return
            last = result.stdout + result.stderr
            time.sleep(0.2)
        raise TopologyBroken(
            f"{name} never became healthy within {bound:g}s; last check said:\n"
            f"{last.decode(errors='replace')[-2000:]}\n{name} log:\n{service.log_tail()}"
        )

    def published(self, name: str, target: int) -> tuple[str, int]:
        """Where the host reaches `target` of `name`; TopologyBroken if it is not published."""
        for port in ports_of(self.services_spec[name]):
            if port.target == target:
                return self.host, port.published
        raise TopologyBroken(f"{name} publishes no port for its {target}")

    def stop(self) -> None:
        for name in reversed(self.order()):
            self.services[name].stop()


@contextlib.contextmanager
def running(model: dict[str, Any], workdir: Path) -> Iterator[Topology]:
    topology = Topology(model, workdir)
    try:
        topology.start()
        yield topology
    finally:
        topology.stop()
