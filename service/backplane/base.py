"""The backplane carries committed change events from the store to every worker.

Guarantees (and non-guarantees) of every implementation:
- `publish` delivers a payload to the subscriptions that are live at that moment, in publish
  order. It raises if the backplane cannot take it; the caller (the store's outbox) retries.
- A subscription may miss payloads while it is down (redis pub/sub keeps nothing). It yields
  `RESUBSCRIBED` after every (re)subscription, so the consumer repairs the gap from the store's
  event log: the event log, not the backplane, is the source of truth.
- `live` is true while the subscription is connected (for /readyz, which reports `degraded`
  while it is not, and for the `duckcast_backplane_connected` gauge).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from typing import ClassVar, Final

from service.metrics import BACKPLANE_CONNECTED

RESUBSCRIBED: Final = None  # yielded after every (re)subscription: fetch what you missed


class Backplane(abc.ABC):
    kind: ClassVar[str]  # the `backplane` label of its metrics
    _live: bool = False

    @property
    def label(self) -> str:
        """The `backplane` label of the metrics about it (a wrapper gives its inner one's)."""
        return self.kind

    @property
    def live(self) -> bool:
        return self._live

    @live.setter
    def live(self, value: bool) -> None:
        # Set only by a subscription: a publish-only backplane (the store's) exports nothing.
        self._live = value
        BACKPLANE_CONNECTED.labels(self.kind).set(int(value))

    async def start(self) -> None:  # noqa: B027 - optional hook
        pass

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass

    @abc.abstractmethod
    async def publish(self, payload: bytes) -> None: ...

    @abc.abstractmethod
    def subscribe(self) -> AsyncIterator[bytes | None]:
        """Payloads in publish order, with RESUBSCRIBED first and after every reconnect."""
