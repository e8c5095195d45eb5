"""Secure by default, as a new user would run it: the README's `duckcast serve` and the
image's own command, with nothing configured; production without a secret; a raw client on
the store's TCP port; and logout reaching every gunicorn worker."""

from __future__ import annotations

import ast
import http.client
import json
import os
import re
import shlex
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from loadtests.harness import children
from service.api.auth import TokenSigner
from service.keys import SECRET_FILE_NAME, derive
from service.pb import store_pb2 as spb
from service.storeclient.protocol import encode_frame
from tests.conftest import RedisServer, free_port, wait_until
from tests.e2e.conftest import DUCKCAST, ROOT, Deployment, is_gunicorn, register_and_login

pytestmark = pytest.mark.e2e


# -- values found in the repository ---------------------------------------------------------


def repository_values() -> set[str]:
    """Every string a careless deployment might have copied from this repository as its
    secret: the string literals of the Python sources, every token of the deployment files
    (Dockerfile, compose, .env examples, deploy/), and the README's code."""
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    values: set[str] = {""}
    for name in files:
        path = ROOT / name
        if name.endswith(".py") and name.startswith(("service/", "deploy/")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    values.add(node.value)
        elif name.startswith(("Dockerfile", "docker-compose", ".env", "deploy/")) or name in (
            "README.md",
            "Makefile",
        ):
            for word in re.split(r"[\s=:\"'`,()\[\]{}]+", path.read_text(errors="replace")):
                values.add(word)
    return {v for v in values if len(v) <= 200}


def forged(secret: str, user_id: int) -> str:
    return TokenSigner(derive(secret.encode(), "token"), 3600).issue(user_id).value


def forged_v1(secret: str, user_id: int) -> str:
    """The previous version's token format and key (sha256("duckcast-token:" + secret)),
    which signed with a built-in development value when none was configured."""
    import base64
    import hashlib
    import hmac

    key = hashlib.sha256(b"duckcast-token:" + secret.encode()).digest()
    payload = f"v1.{user_id}.{int(time.time()) + 3600}"
    mac = base64.urlsafe_b64encode(hmac.new(key, payload.encode(), "sha256").digest())
    return f"{payload}.{mac.rstrip(b'=').decode()}"


def assert_refuses_repository_values(url: str, data_dir: Path) -> None:
    """A real user exists (so a token that verified would answer 200); a token forged with any
    value found in the repository answers 401; and the secret in use is none of them."""
    candidates = repository_values()
    assert len(candidates) > 500  # the scan found the sources
    with httpx.Client(base_url=url, timeout=10) as c:
        genuine = register_and_login(c, "owner")
        assert c.get("/api/me", headers=genuine).status_code == 200
        user_id = c.get("/api/me", headers=genuine).json()["id"]
        tokens = [(value, forged(value, user_id)) for value in sorted(candidates)]
        tokens.append(("the old default", forged_v1("dev-insecure-secret", user_id)))
        for value, token in tokens:
            r = c.get("/api/me", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401, f"a token signed with {value!r} was accepted"
    secret = (data_dir / SECRET_FILE_NAME).read_text().strip()
    assert secret not in candidates
    assert (data_dir / SECRET_FILE_NAME).stat().st_mode & 0o077 == 0


def bare_env(deployment: Deployment, **extra: str) -> dict[str, str]:
    """What a new user has: no DUCKCAST_* setting at all (no secret)."""
    env = deployment.env(**extra)
    env.pop("DUCKCAST_SECRET_KEY")
    return env


def test_default_serve_refuses_tokens_signed_with_repository_values(
    deployment: Deployment,
) -> None:
    """`duckcast serve` with nothing configured generates its own secret: no token signed
    with anything written in this repository (placeholders, examples, old defaults) works."""
    data = deployment.data_dir()
    port = free_port()
    args = ["serve", "--port", str(port), "--data-dir", str(data)]
    proc = deployment.command("bare-serve", args, bare_env(deployment), port)
    proc.wait_ready()
    assert_refuses_repository_values(proc.url, data)
    assert f"secret key in {data}" in proc.logs()  # where it is, never what it is
    secret = (data / SECRET_FILE_NAME).read_text().strip()
    assert secret not in proc.logs()


def image_command() -> tuple[list[str], dict[str, str]]:
    """The Dockerfile's CMD and ENV, as the image would run them."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    cmd = json.loads(re.search(r"^CMD\s+(\[.*\])\s*$", text, re.M).group(1))  # type: ignore[union-attr]
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV\s+(.*)$", text, re.M):
        for pair in shlex.split(line):
            key, _, value = pair.partition("=")
            env[key] = value
    return cmd, env


def test_the_image_command_refuses_tokens_signed_with_repository_values(
    deployment: Deployment,
) -> None:
    """The image's CMD with the image's ENV (its data dir and bind address moved to this
    test's, so it can run here as a process) is safe as it is."""
    cmd, image_env = image_command()
    assert cmd[0] == "duckcast"
    data = deployment.data_dir()
    port = free_port()
    args = cmd[1:]
    args[args.index("--port") + 1] = str(port)
    args[args.index("--host") + 1] = "127.0.0.1"  # the image binds 0.0.0.0 inside its netns
    image_env["DUCKCAST_DATA_DIR"] = str(data)
    proc = deployment.command("image-cmd", args, bare_env(deployment, **image_env), port)
    proc.wait_ready()
    assert_refuses_repository_values(proc.url, data)


def test_two_starts_on_one_data_dir_share_the_generated_secret(
    deployment: Deployment, redis_server: RedisServer
) -> None:
    """A token issued by one start is valid after a restart on the same data dir, including
    a restart as `serve --workers 2` (store process + gunicorn): every process reads the one
    generated secret, none makes its own."""
    data = deployment.data_dir()
    port = free_port()
    args = ["serve", "--port", str(port), "--data-dir", str(data)]
    first = deployment.command("first", args, bare_env(deployment), port)
    first.wait_ready()
    with httpx.Client(base_url=first.url, timeout=10) as c:
        headers = register_and_login(c, "stays")
    first.kill_group()
    secret = (data / SECRET_FILE_NAME).read_text()

    args = [*args, "--workers", "2"]
    env = bare_env(deployment, REDIS_URL=redis_server.url)
    second = deployment.command("second", args, env, port)
    second.wait_ready()
    for _ in range(6):  # new connections: both workers answer some
        with httpx.Client(base_url=second.url, timeout=10) as c:
            assert c.get("/api/me", headers=headers).status_code == 200
            r = c.post("/api/items", json={"title": "through the store"}, headers=headers)
            assert r.status_code == 201, r.text  # the worker passed the store's handshake
    assert (data / SECRET_FILE_NAME).read_text() == secret


@pytest.mark.parametrize(
    "given", [None, "short-unique-value-31-bytes-long"], ids=["missing", "short"]
)
@pytest.mark.parametrize("command", ["serve", "store"])
def test_production_refuses_a_missing_or_short_secret_without_printing_it(
    deployment: Deployment, given: str | None, command: str
) -> None:
    extra = {"DUCKCAST_ENVIRONMENT": "production"}
    if given is not None:
        extra["DUCKCAST_SECRET_KEY"] = given
    env = bare_env(deployment, **extra)
    data = deployment.data_dir()
    done = subprocess.run(
        [*DUCKCAST, command, "--data-dir", str(data)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=data,
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "DUCKCAST_SECRET_KEY" in output and "Traceback" not in output
    if given is not None:
        assert given not in output and given[:10] not in output
    assert not (data / SECRET_FILE_NAME).exists()


# -- the store's TCP port ---------------------------------------------------------------------


def test_a_raw_client_on_the_store_tcp_port_gets_nothing(deployment: Deployment) -> None:
    """`duckcast store --listen tcp:…` (compose's store): a client that sends a request
    without the handshake, or after failing it with a wrong key, receives nothing of the
    store's and is disconnected."""
    port = free_port()
    data = deployment.data_dir()
    args = ["store", "--listen", f"tcp:127.0.0.1:{port}", "--data-dir", str(data)]
    store = deployment.command("store", args, deployment.env())
    store.wait_listening("127.0.0.1", port)
    request = spb.StoreRequest(id=1, get_user_by_name=spb.GetUserByName(username="admin"))
    frame = encode_frame(request.SerializeToString())

    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(frame)
        assert raw.recv(65536) == b""  # closed, nothing sent

    import asyncio

    from service.keys import Keys
    from service.storeclient.handshake import HandshakeError, client_handshake

    async def wrong_key() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            with pytest.raises(HandshakeError):
                await client_handshake(reader, writer, Keys.from_secret(b"not it").store)
            writer.write(frame)
            async with asyncio.timeout(10):
                return await reader.read()
        finally:
            writer.close()

    assert asyncio.run(wrong_key()) == b""
    wait_until(lambda: "refused a store connection" in store.logs(), timeout=5)


# -- logout on every worker -------------------------------------------------------------------


def serving_pid(conn: http.client.HTTPConnection, server_port: int, pids: list[int]) -> int:
    """The worker process holding the server side of this keep-alive connection (found by
    its socket inode in /proc/net/tcp and the workers' fds)."""
    assert conn.sock is not None
    client_port = conn.sock.getsockname()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if (
            int(local.split(":")[1], 16) == server_port
            and int(remote.split(":")[1], 16) == client_port
        ):
            inode = fields[9]
    assert inode is not None, "the server side of the connection is not in /proc/net/tcp"
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    raise AssertionError("no worker holds the connection")


def me(conn: http.client.HTTPConnection, token: str) -> int:
    conn.request("GET", "/api/me", headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    response.read()
    return response.status


def test_after_logout_the_token_gets_401_on_every_worker_within_a_second(
    deployment: Deployment, redis_server: RedisServer
) -> None:
    """`serve --workers 2`: one keep-alive connection pinned to each worker; logout through
    one; from the logout's answer on, every worker refuses the token within a second."""
    proc = deployment.serve(workers=2, REDIS_URL=redis_server.url)
    with httpx.Client(base_url=proc.url, timeout=10) as c:
        token = register_and_login(c, "leaver")["Authorization"].split()[1]
    master = next(p for p in children(proc.pid) if is_gunicorn(p))
    workers = children(master)
    assert len(workers) == 2, workers
    pinned: dict[int, http.client.HTTPConnection] = {}
    spare = []
    for _ in range(60):  # the kernel hands connections to whichever worker accepts first
        conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=10)
        assert me(conn, token) == 200
        pid = serving_pid(conn, proc.port, workers)
        if pid in pinned:
            spare.append(conn)
        else:
            pinned[pid] = conn
        if len(pinned) == 2:
            break
    assert sorted(pinned) == sorted(workers), "could not reach both workers"

    conn = next(iter(pinned.values()))
    conn.request("POST", "/api/logout", headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    response.read()
    assert response.status == 204
    logged_out = time.monotonic()
    took = {}
    for pid, worker_conn in pinned.items():
        while me(worker_conn, token) != 401:
            assert time.monotonic() - logged_out < 1.0, f"worker {pid} still accepts the token"
            time.sleep(0.01)
        took[pid] = round(time.monotonic() - logged_out, 3)
    for c in [*pinned.values(), *spare]:
        c.close()
    print(f"revocation reached the workers after {took} s")
