"""The live list in Chromium: two people's changes reach each other without reloading, own
writes reconcile with their events, filters hold, and a page survives a server restart."""

from __future__ import annotations

import secrets

import pytest
from playwright.sync_api import Page, expect

from tests.browser.app import (
    LIVE_MS,
    ApiUser,
    add_item,
    row,
    row_by_id,
    status,
    wait_for_seq,
)
from tests.browser.conftest import EVENT_RETENTION, PASSWORD, People, Service

pytestmark = pytest.mark.e2e


def test_two_people_see_each_others_changes_live(service: Service, people: People) -> None:
    """A signs up in the form and creates, edits, completes, reopens and deletes an item; B,
    in another context, sees each change within 2 s without reloading, and gets no control to
    change A's item. A's own writes show at once, once each. A signs out and in again; the
    page never holds the token where script could read it."""
    a = people("ann")
    a.page.goto(service.url)
    a.page.get_by_label("Username").fill(a.username)
    a.page.get_by_label("Password").fill(PASSWORD)
    a.page.get_by_role("button", name="Sign up").click()
    expect(status(a.page)).to_contain_text("Live")
    expect(a.page.get_by_role("button", name="Sign out")).to_be_visible()

    b = people("ben").signed_up(service.url)
    b.page.goto(service.url)
    expect(status(b.page)).to_contain_text("Live")
    b.page.evaluate("window.sameDocument = true")

    tag = secrets.token_hex(3)
    title = f"Walk the duck {tag}"
    item_id = add_item(a.page, title, "Around the pond, twice")
    expect(row(a.page, title)).to_have_count(1)
    expect(row(b.page, title)).to_have_count(1, timeout=LIVE_MS)
    theirs = row_by_id(b.page, item_id)
    expect(theirs).to_contain_text("Around the pond, twice")
    expect(theirs.get_by_role("checkbox", name="Done")).to_be_disabled()
    expect(theirs.get_by_role("button")).to_have_count(0)  # no Edit, no Delete
    expect(theirs).to_contain_text("read-only")

    mine = row_by_id(a.page, item_id)
    mine.get_by_role("button", name="Edit").click()
    mine.get_by_label("Title").fill(f"Walk both ducks {tag}")
    mine.get_by_role("button", name="Save").click()
    expect(row(a.page, f"Walk both ducks {tag}")).to_have_count(1)
    expect(row(b.page, f"Walk both ducks {tag}")).to_have_count(1, timeout=LIVE_MS)
    expect(row(b.page, title)).to_have_count(0)

    mine.get_by_role("checkbox", name="Done").check()
    expect(mine.get_by_role("checkbox", name="Done")).to_be_checked()
    expect(theirs.get_by_role("checkbox", name="Done")).to_be_checked(timeout=LIVE_MS)
    mine.get_by_role("checkbox", name="Done").uncheck()
    expect(theirs.get_by_role("checkbox", name="Done")).not_to_be_checked(timeout=LIVE_MS)

    mine.get_by_role("button", name="Delete").click()
    expect(row_by_id(a.page, item_id)).to_have_count(0)
    expect(row_by_id(b.page, item_id)).to_have_count(0, timeout=LIVE_MS)
    assert b.page.evaluate("window.sameDocument") is True  # never reloaded

    # The session is the HttpOnly cookie: the page holds no token anywhere it could read.
    storage = "[localStorage.length, sessionStorage.length, document.cookie]"
    assert a.page.evaluate(storage) == [0, 0, ""]
    a.page.get_by_role("button", name="Sign out").click()
    expect(a.page.get_by_text("You are signed out.")).to_be_visible()
    assert a.context.request.get(f"{service.url}/api/me").status == 401
    a.page.get_by_label("Username").fill(a.username)
    a.page.get_by_label("Password").fill(PASSWORD)
    a.page.get_by_role("button", name="Sign in").click()
    expect(status(a.page)).to_contain_text("Live")


def test_own_write_reconciles_with_its_event(service: Service, people: People) -> None:
    """The answers to A's create and to A's Done click show at once; when the change events
    for them arrive (the list's seq passes them), the item is neither doubled nor rebuilt: its
    element is updated in place, never removed and put back (no flicker)."""
    a = people("amy").signed_up(service.url)
    a.page.goto(service.url)
    expect(status(a.page)).to_contain_text("Live")
    a.page.evaluate(
        """() => {
          window.removed = [];
          new MutationObserver((changes) => {
            for (const c of changes)
              for (const n of c.removedNodes) window.removed.push(n.dataset?.id);
          }).observe(document.querySelector('.items'), { childList: true });
        }"""
    )
    observer = ApiUser(service.url, f"obs_{secrets.token_hex(3)}")
    try:
        title = f"Reconcile me {secrets.token_hex(3)}"
        item_id = add_item(a.page, title)
        wait_for_seq(a.page, observer.seq())
        expect(row(a.page, title)).to_have_count(1)
        done = row(a.page, title).get_by_role("checkbox", name="Done")
        done.check()
        wait_for_seq(a.page, observer.seq())
        expect(done).to_be_checked()
        expect(row(a.page, title)).to_have_count(1)
        ids = a.page.locator(".items > li").evaluate_all("els => els.map(e => e.dataset.id)")
        assert len(ids) == len(set(ids))
        assert str(item_id) not in a.page.evaluate("window.removed")
    finally:
        observer.close()


def test_filters_and_search_follow_live_changes(service: Service, people: People) -> None:
    """ "Only mine" shows only the viewer's items, live ones included; an item that stops
    matching the status filter leaves the list; a title search narrows live events too."""
    tag = secrets.token_hex(3)
    b = people("bea").signed_up(service.url)
    other = ApiUser(service.url, f"oth_{tag}")
    try:
        b.page.goto(service.url)
        expect(status(b.page)).to_contain_text("Live")
        b.page.get_by_label("Only mine").check()
        expect(status(b.page)).to_contain_text("Live")
        other.create(f"Not yours {tag}")
        own = add_item(b.page, f"Yours {tag}")
        wait_for_seq(b.page, other.seq())
        expect(row(b.page, f"Not yours {tag}")).to_have_count(0)
        expect(row_by_id(b.page, own)).to_have_count(1)

        b.page.get_by_role("radio", name="Active").check()
        expect(status(b.page)).to_contain_text("Live")
        expect(row_by_id(b.page, own)).to_have_count(1)
        # click, not check(): the checkbox leaves with its row, so it never reads checked
        row_by_id(b.page, own).get_by_role("checkbox", name="Done").click()
        expect(row_by_id(b.page, own)).to_have_count(0)  # completed: no longer "Active"

        b.page.get_by_role("radio", name="All").check()
        b.page.get_by_label("Only mine").uncheck()
        b.page.get_by_label("Search").fill(f"zebra {tag}")
        expect(b.page.get_by_role("listitem")).to_have_count(0)
        match = other.create(f"A zebra {tag} crossing")
        other.create(f"A goose {tag} honking")
        expect(row_by_id(b.page, match["id"])).to_have_count(1, timeout=LIVE_MS)
        wait_for_seq(b.page, other.seq())
        expect(b.page.get_by_role("listitem")).to_have_count(1)
    finally:
        other.close()


def hold_off_the_stream(page: Page) -> None:
    """Answers the page's /api/events with the 503 a worker gives while its store is
    unavailable. EventSource gives up on an HTTP error: the page must reopen it itself."""
    page.route(
        "**/api/events*",
        lambda route: route.fulfill(
            status=503, headers={"Retry-After": "1"}, json={"detail": "store unavailable"}
        ),
    )


def test_reset_reloads_the_list(service: Service, people: People) -> None:
    """When the page's resume point has left the event log (more than the retained events
    happened while it could not connect), the stream says `reset`: the page reloads its list,
    without reloading itself, and shows the newest items once each."""
    tag = secrets.token_hex(3)
    c = people("cy").signed_up(service.url)
    writer = ApiUser(service.url, f"blk_{tag}")
    try:
        writer.create(f"Before {tag}")
        hold_off_the_stream(c.page)
        c.page.goto(service.url)
        expect(row(c.page, f"Before {tag}")).to_have_count(1)
        expect(status(c.page)).to_contain_text("Reconnecting")
        c.page.evaluate("window.sameDocument = true")
        titles = [f"Bulk {i:03d} {tag}" for i in range(2 * EVENT_RETENTION + 50)]
        writer.bulk(titles)
        with c.page.expect_request(lambda r: "/api/items?" in r.url):  # the reload
            c.page.unroute("**/api/events*")
            expect(status(c.page)).to_contain_text("Live", timeout=20_000)
        newest = list(reversed(titles))[:20]
        expect(c.page.locator(".items > li .title")).to_have_text(newest)
        assert c.page.evaluate("window.sameDocument") is True
    finally:
        writer.close()


def test_page_survives_a_server_restart(service: Service, people: People) -> None:
    """B's page stays open while the whole service stops and starts again: its connection
    state reads Reconnecting, then Live; the changes made while it was away (held off the
    stream until they are all made) appear once each, without a reload."""
    tag = secrets.token_hex(3)
    b = people("bo").signed_up(service.url)
    writer = ApiUser(service.url, f"wri_{tag}")
    try:
        kept = writer.create(f"Kept {tag}")
        doomed = writer.create(f"Doomed {tag}")
        b.page.goto(service.url)
        expect(status(b.page)).to_contain_text("Live")
        expect(row_by_id(b.page, doomed["id"])).to_have_count(1)
        b.page.evaluate("window.sameDocument = true")

        service.stop()
        expect(status(b.page)).to_contain_text("Reconnecting")
        # Keep B off the stream until every change below is made: they happen while it is away.
        hold_off_the_stream(b.page)
        service.start()
        added = [writer.create(f"While away {i} {tag}") for i in range(3)]
        writer.update(kept["id"], title=f"Kept and renamed {tag}", status="completed")
        writer.delete(doomed["id"])
        expect(status(b.page)).to_contain_text("Reconnecting")
        expect(row_by_id(b.page, added[0]["id"])).to_have_count(0)

        b.page.unroute("**/api/events*")
        expect(status(b.page)).to_contain_text("Live", timeout=20_000)
        for item in added:
            expect(row(b.page, item["title"])).to_have_count(1)
        renamed = row(b.page, f"Kept and renamed {tag}")
        expect(renamed).to_have_count(1)
        expect(renamed.get_by_role("checkbox", name="Done")).to_be_checked()
        expect(row_by_id(b.page, doomed["id"])).to_have_count(0)
        wait_for_seq(b.page, writer.seq())
        ids = b.page.locator(".items > li").evaluate_all("els => els.map(e => e.dataset.id)")
        assert len(ids) == len(set(ids)), ids
        assert b.page.evaluate("window.sameDocument") is True
    finally:
        writer.close()
