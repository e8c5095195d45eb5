"""Stream filters on the events a real store emits: an item is seen entering and leaving."""

from __future__ import annotations

from service.pb import duckcast_pb2 as pb
from service.realtime.filters import Filters
from service.storeclient.inprocess import InProcessStoreClient


class Held:
    def __init__(self, event: pb.DomainEvent) -> None:
        self.event = event


async def test_filtered_subscriber_sees_create_leave_reenter_delete(
    store: InProcessStoreClient,
) -> None:
    """The store records the state before each update/delete in `previous`; `status=active`
    with the owner matches create (after), leave (before), re-enter (after), delete (before),
    and not a change made while the item is outside the view, nor another owner's item."""
    bob = await store.create_user("bob-filters", "x")
    other = await store.create_user("eve-filters", "x")
    start = await store.ping()
    (item,) = (await store.create_items(bob.id, [pb.ItemCreate(title="m")])).items
    await store.update_item(bob.id, item.id, pb.ItemUpdate(status="completed"))
    await store.update_item(bob.id, item.id, pb.ItemUpdate(title="renamed"))
    await store.update_item(bob.id, item.id, pb.ItemUpdate(status="active"))
    await store.delete_item(bob.id, item.id)
    (theirs,) = (await store.create_items(other.id, [pb.ItemCreate(title="x")])).items
    await store.delete_item(other.id, theirs.id)
    events = list((await store.events_since(start)).events)

    kinds = [pb.EventType.Name(e.type) for e in events]
    assert kinds == ["CREATED", "UPDATED", "UPDATED", "UPDATED", "DELETED", "CREATED", "DELETED"]
    assert not events[0].HasField("previous")
    assert [(e.previous.owner_id, e.previous.status) for e in events[1:5]] == [
        (bob.id, "active"),
        (bob.id, "completed"),
        (bob.id, "completed"),
        (bob.id, "active"),
    ]

    view = Filters(owner_id=bob.id, status="active")
    seen = [e.seq for e in events if view.match(Held(e))]
    assert seen == [events[i].seq for i in (0, 1, 3, 4)]
    completed = Filters(status="completed")
    assert [e.seq for e in events if completed.match(Held(e))] == [events[i].seq for i in (1, 2, 3)]
    assert [e.seq for e in events if Filters().match(Held(e))] == [e.seq for e in events]
    reset = pb.DomainEvent(type=pb.RESET, seq=99)
    assert view.match(Held(reset))
