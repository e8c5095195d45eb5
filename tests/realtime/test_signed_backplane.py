"""Signed backplane messages (service.backplane.signed): only the store, which holds the
deployment's secret, can put events in front of subscribers. Anyone else who can PUBLISH to
Redis is dropped before the relay, and cannot make a real event be discarded as a duplicate.

Also: REDIS_URL with a password, an ACL user, and rediss:// (TLS) against real redis-servers.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from service.backplane import RESUBSCRIBED, backplane_from_url
from service.backplane.signed import SignedBackplane
from service.constants import EVENTS_CHANNEL
from service.keys import Keys
from service.pb import duckcast_pb2 as pb
from service.pb import store_pb2 as spb
from service.storeclient.inprocess import InProcessStoreClient
from tests.conftest import RedisServer
from tests.realtime.conftest import TIMEOUT, until
from tests.realtime.test_relay import batch, relaying

KEYS = Keys.from_secret(b"backplane tests: the deployment's secret")
OTHER = Keys.from_secret(b"backplane tests: somebody else's secret")


def rejected() -> float:
    return REGISTRY.get_sample_value("duckcast_backplane_rejected_total") or 0.0


def forged_batch(seq: int) -> bytes:
    event = pb.DomainEvent(type=pb.CREATED, seq=seq, item=pb.Item(id=999, title="forged"))
    return spb.EventBatch(events=[event], last_seq=seq).SerializeToString()


async def test_a_hand_published_message_never_reaches_a_subscriber(
    store: InProcessStoreClient, redis_server: RedisServer
) -> None:
    """A batch PUBLISHed by hand (unsigned, signed with another secret, or a real signature
    over other bytes) carrying the next seq is dropped and counted; the real event with that
    seq, published by the store's side afterwards, is delivered (not taken for a duplicate)."""
    worker = backplane_from_url(redis_server.url, KEYS.backplane)
    publisher = backplane_from_url(redis_server.url, KEYS.backplane)
    assert isinstance(publisher, SignedBackplane)
    intruder = aioredis.Redis(port=redis_server.port)
    try:
        async with relaying(worker, store) as (_, ring, sub):
            await until(lambda: worker.live, what="subscribed")
            seq = ring.seq + 1
            genuine = publisher.sign(forged_batch(seq))
            tampered = genuine[:-1] + bytes([genuine[-1] ^ 1])
            other_key = SignedBackplane(worker, OTHER.backplane, EVENTS_CHANNEL)
            attempts = [forged_batch(seq), other_key.sign(forged_batch(seq)), tampered, b""]
            before = rejected()
            for message in attempts:
                assert await intruder.publish(EVENTS_CHANNEL, message) == 1  # it was heard
            await until(lambda: rejected() == before + len(attempts), what="forgeries dropped")

            (item,) = (await store.create_items(1, [pb.ItemCreate(title="real")])).items
            await publisher.publish(await batch(store, seq - 1, seq))
            async with asyncio.timeout(TIMEOUT):
                delivered = await sub.next_batch(TIMEOUT)
            assert [(e.seq, e.event.item.title) for e in delivered] == [(seq, "real")]
            assert delivered[0].event.item.id == item.id
            assert ring.seq == seq
    finally:
        await intruder.aclose()
        await publisher.close()
        await worker.close()


async def test_a_signed_message_is_bound_to_its_channel() -> None:
    """The MAC covers the channel name: a message signed for one channel does not verify on
    another (a message lifted from elsewhere cannot be replayed into the events channel)."""
    inner = backplane_from_url(None)
    events = SignedBackplane(inner, KEYS.backplane, EVENTS_CHANNEL)
    other = SignedBackplane(inner, KEYS.backplane, "duckcast:other")
    message = events.sign(b"payload")
    assert events.verify(message) == b"payload"
    assert other.verify(message) is None


def test_redis_needs_a_signing_key() -> None:
    with pytest.raises(ValueError, match="signing key"):
        backplane_from_url("redis://127.0.0.1:1/0")


async def served_round_trip(server: RedisServer, url: str) -> bytes | None:
    """round_trip(url) against `server`, started for it and stopped after."""
    server.start()
    try:
        return await round_trip(url)
    finally:
        server.stop(kill=True)


async def round_trip(url: str) -> bytes | None:
    """Publish one message over a backplane built from `url` and return what a subscriber
    built from the same url received."""
    subscriber = backplane_from_url(url, KEYS.backplane)
    publisher = backplane_from_url(url, KEYS.backplane)
    messages = subscriber.subscribe()
    try:
        async with asyncio.timeout(TIMEOUT):
            assert await anext(messages) is RESUBSCRIBED
            await publisher.publish(b"hello")
            return await anext(messages)
    finally:
        await messages.aclose()  # type: ignore[attr-defined]
        await publisher.close()
        await subscriber.close()


async def test_redis_url_with_a_password(tmp_path: Path) -> None:
    """redis://:PASSWORD@host: (requirepass) works; the same URL without it is refused."""
    server = RedisServer(tmp_path, "--requirepass", "s3cret-pw", password="s3cret-pw")
    server.start()
    try:
        assert await round_trip(f"redis://:s3cret-pw@127.0.0.1:{server.port}/0") == b"hello"
        with pytest.raises(Exception, match=r"(?i)auth"):
            await backplane_from_url(server.url, KEYS.backplane).publish(b"x")
    finally:
        server.stop(kill=True)


async def test_redis_url_with_an_acl_user(tmp_path: Path) -> None:
    """redis://USER:PASSWORD@host with an ACL user allowed only what Duckcast needs: PUBLISH
    and SUBSCRIBE on its own channels (and the health-check PING)."""
    acl = [
        "--user", "default", "off",
        "--user", "duckcast", "on", ">acl-pw", "resetchannels", "&duckcast:*",
        "+publish", "+subscribe", "+unsubscribe", "+ping", "+hello",
    ]  # fmt: skip
    server = RedisServer(tmp_path, *acl, username="duckcast", password="acl-pw")
    url = f"redis://duckcast:acl-pw@127.0.0.1:{server.port}/0"
    assert await served_round_trip(server, url) == b"hello"


@pytest.fixture
def tls_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate (and its key) for 127.0.0.1."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_rediss_url_over_tls(tmp_path: Path, tls_cert: tuple[Path, Path]) -> None:
    """rediss://host:port/0?ssl_ca_certs=PATH: TLS with the server's certificate checked
    against the given CA (here a self-signed certificate for 127.0.0.1)."""
    cert, key = tls_cert
    server = RedisServer(tmp_path)
    tls_port = server.port
    server.args = [
        "--tls-port", str(tls_port), "--port", "0", "--tls-cert-file", str(cert),
        "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
    ]  # fmt: skip
    server.tls_ca = cert
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}"
    assert await served_round_trip(server, url) == b"hello"
