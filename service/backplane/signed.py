"""Signed backplane messages: only holders of the shared secret can publish events.

Anyone who can reach Redis can PUBLISH to the events channel. The store signs every batch it
publishes (HMAC-SHA256 over a version byte, the channel name and the payload, keyed by
`Keys.backplane`); subscribers drop anything unsigned or forged before the relay sees it,
count it (`duckcast_backplane_rejected_total`) and log it at most once a minute. A dropped
message is then just a lost one: the real event with that seq still arrives (or the relay
fetches it from the store's log when it sees the gap), so a forgery can neither inject an
event nor make a real one be discarded as a duplicate.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import AsyncIterator

from service.backplane.base import RESUBSCRIBED, Backplane
from service.logthrottle import ThrottledWarning
from service.metrics import BACKPLANE_REJECTED

logger = logging.getLogger(__name__)

VERSION = b"\x01"
MAC_BYTES = 32
_HEADER = len(VERSION) + MAC_BYTES


class SignedBackplane(Backplane):
    def __init__(self, inner: Backplane, key: bytes, channel: str) -> None:
        self._inner = inner
        self._key = key
        self._context = VERSION + channel.encode() + b"\x00"
        self._rejected = ThrottledWarning(logger)

    @property
    def label(self) -> str:
        return self._inner.label

    @property
    def live(self) -> bool:
        return self._inner.live

    @live.setter
    def live(self, value: bool) -> None:
        self._inner.live = value

    async def start(self) -> None:
        await self._inner.start()

    async def close(self) -> None:
        await self._inner.close()

    def sign(self, payload: bytes) -> bytes:
        return VERSION + self._mac(payload) + payload

    def verify(self, message: bytes) -> bytes | None:
        """The payload of a message this deployment signed, else None."""
        if len(message) < _HEADER or message[:1] != VERSION:
            return None
        payload = message[_HEADER:]
        if not hmac.compare_digest(message[1:_HEADER], self._mac(payload)):
            return None
        return payload

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, self._context + payload, hashlib.sha256).digest()

    async def publish(self, payload: bytes) -> None:
        await self._inner.publish(self.sign(payload))

    async def subscribe(self) -> AsyncIterator[bytes | None]:
        async for message in self._inner.subscribe():
            if message is RESUBSCRIBED:
                yield RESUBSCRIBED
                continue
            payload = self.verify(message)
            if payload is None:
                BACKPLANE_REJECTED.inc()
                self._rejected("dropped a backplane message without a valid signature")
                continue
            yield payload
