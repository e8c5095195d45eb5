"""The list's rules (static/js/model.js), run in Chromium on the module the app loads: the
snapshot-then-stream seam, versions, filters, the page window, deletes and optimistic state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Route

from service.api.routes.ops import STATIC

pytestmark = pytest.mark.e2e

# Helpers for the snippets: item(id, version, fields) and page(items, seq, {page, pages, limit}).
PRELUDE = """
const { ItemList } = await import('/static/js/model.js');
const item = (id, version = 1, fields = {}) => ({
  id, version, title: `item ${id}`, description: '', status: 'active', priority: 0,
  owner_id: 1, created_at: '2026-01-01T00:00:00Z', updated_at: '2026-01-01T00:00:00Z', ...fields,
});
const page = (items, seq, more = {}) => ({
  items, seq, page: 1, pages: 1, limit: 20, total: items.length, ...more,
});
"""


ORIGIN = "http://app.test"


@pytest.fixture(scope="module")
def blank(browser: Browser) -> Iterator[Page]:
    """A page whose origin serves static/ as the app does (no server needed for pure logic)."""
    context = browser.new_context()

    def serve(route: Route) -> None:
        path = route.request.url.removeprefix(ORIGIN)
        if path.startswith("/static/"):
            route.fulfill(path=STATIC / path.removeprefix("/static/"))
        else:
            route.fulfill(body="<!doctype html><title>model</title>", content_type="text/html")

    context.route(f"{ORIGIN}/**", serve)
    page = context.new_page()
    page.goto(f"{ORIGIN}/")
    yield page
    context.close()


def run(page: Page, body: str) -> Any:
    return page.evaluate(f"async () => {{ {PRELUDE} {body} }}")


def test_events_up_to_the_snapshot_seq_are_skipped(blank: Page) -> None:
    """The list is loaded with its seq; only later events are applied."""
    out = run(
        blank,
        """
        const m = new ItemList();
        m.snapshot(page([item(3), item(2)], 10));
        const stale = m.apply('item_created', 9, item(4));
        const same = m.apply('item_deleted', 10, { id: 3 });
        const later = m.apply('item_created', 11, item(5));
        return { stale, same, later, ids: m.ordered(), seq: m.seq };
        """,
    )
    assert out == {"stale": False, "same": False, "later": True, "ids": [5, 3, 2], "seq": 11}


def test_events_during_a_snapshot_load_wait_for_it(blank: Page) -> None:
    """Events that arrive while a snapshot loads are held, then applied if newer than it."""
    out = run(
        blank,
        """
        const m = new ItemList();
        m.beginSnapshot();
        const held = m.apply('item_created', 11, item(6));
        m.apply('item_created', 9, item(4));
        const before = m.ordered();
        m.snapshot(page([item(5), item(3)], 10));
        return { held, before, after: m.ordered() };
        """,
    )
    assert out == {"held": False, "before": [], "after": [6, 5, 3]}


def test_only_a_higher_version_replaces_an_item(blank: Page) -> None:
    """Our own write's answer and its event carry the same version: the second changes
    nothing; a late answer cannot undo a newer event."""
    out = run(
        blank,
        """
        const m = new ItemList();
        m.snapshot(page([item(3)], 10));
        const answer = m.upsert(item(3, 2, { title: 'mine' }));
        const echo = m.apply('item_updated', 11, item(3, 2, { title: 'echo' }));
        const newer = m.apply('item_updated', 12, item(3, 3, { title: 'theirs' }));
        const late = m.upsert(item(3, 2, { title: 'late answer' }));
        return { answer, echo, newer, late, title: m.view(3).title, size: m.items.size };
        """,
    )
    assert out == {
        "answer": True,
        "echo": False,
        "newer": True,
        "late": False,
        "title": "theirs",
        "size": 1,
    }


def test_items_enter_and_leave_the_filtered_list(blank: Page) -> None:
    """An item that stops matching the filters leaves the list; one that starts matching
    enters it; the title search applies to events too."""
    out = run(
        blank,
        """
        const m = new ItemList({ status: 'active', q: 'Duck' });
        m.snapshot(page([item(3, 1, { title: 'rubber duck' })], 10));
        const done = { title: 'rubber duck', status: 'completed' };
        const left = m.apply('item_updated', 11, item(3, 2, done));
        const entered = m.apply('item_updated', 12, item(2, 2, { title: 'DUCK pond' }));
        const other = m.apply('item_created', 13, item(4, 1, { title: 'goose' }));
        return { left, entered, other, ids: m.ordered() };
        """,
    )
    assert out == {"left": True, "entered": True, "other": False, "ids": [2]}


def test_events_apply_only_inside_the_page_window(blank: Page) -> None:
    """On page 2 of 3 (ids 30..21) a new item (id 50) belongs to page 1 and an update to
    id 10 to page 3: neither shows; an update to id 25 does."""
    out = run(
        blank,
        """
        const ids = Array.from({ length: 10 }, (_, i) => 30 - i);
        const m = new ItemList();
        m.snapshot(page(ids.map((id) => item(id)), 40, { page: 2, pages: 3, limit: 10 }));
        const created = m.apply('item_created', 41, item(50));
        const below = m.apply('item_updated', 42, item(10, 2));
        const inside = m.apply('item_updated', 43, item(25, 2, { title: 'renamed' }));
        return { created, below, inside, size: m.items.size, title: m.view(25).title };
        """,
    )
    assert out == {"created": False, "below": False, "inside": True, "size": 10, "title": "renamed"}


def test_page_one_keeps_its_size_as_items_arrive(blank: Page) -> None:
    """A full page 1 shows a new item at the top and passes its oldest on to page 2; an item
    older than all it shows that starts to match belongs to page 2 already."""
    out = run(
        blank,
        """
        const m = new ItemList({ status: 'active' });
        m.snapshot(page([item(5), item(4)], 10, { limit: 2, pages: 1 }));
        m.apply('item_created', 11, item(6));
        const afterCreate = m.ordered();
        const older = m.apply('item_updated', 12, item(1, 2));
        return { afterCreate, older, ids: m.ordered(), hasOlder: m.hasOlder };
        """,
    )
    assert out == {"afterCreate": [6, 5], "older": False, "ids": [6, 5], "hasOlder": True}


def test_a_deleted_item_never_comes_back(blank: Page) -> None:
    """After our own (optimistic) delete, neither an older event still in flight nor a
    snapshot taken before the delete brings the item back."""
    out = run(
        blank,
        """
        const m = new ItemList();
        m.snapshot(page([item(3), item(2)], 10));
        m.forget(3);
        const event = m.apply('item_updated', 11, item(3, 2));
        m.snapshot(page([item(3, 2), item(2)], 11));
        return { event, ids: m.ordered() };
        """,
    )
    assert out == {"event": False, "ids": [2]}


def test_an_optimistic_change_shows_until_its_answer(blank: Page) -> None:
    """The Done checkbox shows its new state at once; an event for an earlier change does not
    flip it back while the request is in flight."""
    out = run(
        blank,
        """
        const m = new ItemList();
        m.snapshot(page([item(3)], 10));
        m.setPending(3, { status: 'completed' });
        m.apply('item_updated', 11, item(3, 2, { title: 'renamed meanwhile' }));
        const during = m.view(3);
        m.clearPending(3);
        m.upsert(item(3, 3, { title: 'renamed meanwhile', status: 'completed' }));
        return { during: [during.status, during.title], after: m.view(3).status };
        """,
    )
    assert out == {"during": ["completed", "renamed meanwhile"], "after": "completed"}
