"""The stream filters (`?owner_id=&status=`): which events one subscriber receives.

An event is delivered when the item matches the filters before OR after the change, so a
filtered client sees an item enter its view (created, or updated into it), and leave it
(updated out of it, or deleted) and can keep an exact list. The state before comes from the
event's `previous` (set by the store on UPDATED and DELETED); the state after is `item`, except
on DELETED where there is no after. A RESET reaches every subscriber.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from service.pb import duckcast_pb2 as pb


class CarriesEvent(Protocol):
    """Anything holding a DomainEvent (the ring's EncodedEvent)."""

    @property
    def event(self) -> pb.DomainEvent: ...


class Filters(NamedTuple):
    owner_id: int | None = None
    status: str | None = None

    def _state(self, owner_id: int, status: str) -> bool:
        return (self.owner_id is None or owner_id == self.owner_id) and (
            self.status is None or status == self.status
        )

    def match(self, ev: CarriesEvent) -> bool:
        event = ev.event
        kind = event.type
        if kind == pb.RESET:
            return True
        if kind != pb.DELETED and self._state(event.item.owner_id, event.item.status):
            return True  # the state after (created or updated into the view)
        if event.HasField("previous"):
            prev = event.previous
            return self._state(prev.owner_id, prev.status)  # the state before
        # An event from before the store recorded `previous`: on DELETED the item is the
        # last state, which is the state before.
        return kind == pb.DELETED and self._state(event.item.owner_id, event.item.status)


NO_FILTERS = Filters()
