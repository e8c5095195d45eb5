"""Screenshots of the main views at desktop and phone sizes, as test artifacts in
artifacts/screenshots/ (git-ignored; docs/screenshots/ holds the one the README shows). This
module has a service of its own, so the pictures show only the scene set up here."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.app import ApiUser, add_item, row, row_by_id, status
from tests.browser.conftest import PHONE, People, Person, Service, shot

pytestmark = pytest.mark.e2e


def arrive(person: Person, service: Service, size: str) -> Person:
    """The sign-in page (pictured), then signed up and on the live list."""
    person.page.goto(service.url)
    expect(person.page.get_by_role("button", name="Sign in")).to_be_visible()
    shot(person.page, f"sign-in-{size}")
    person.signed_up(service.url)
    person.page.reload()
    expect(status(person.page)).to_contain_text("Live")
    return person


def test_screenshots(service: Service, people: People) -> None:
    """Each picture is taken once its view shows what it should: the sign-in form; the list
    with someone else's live items, a completed item, an attachment and statistics; the
    protobuf stream with decoded events."""
    neighbour = ApiUser(service.url, "sam")
    try:
        neighbour.create(
            "Count the ducklings", description="Seven at dawn, eight at noon?", priority=40
        )
        kim = arrive(people("kim", unique=False), service, "desktop")
        jackets = add_item(kim.page, "Order life jackets", "Sizes S, M and one for the heron.")
        row_by_id(kim.page, jackets).get_by_role("checkbox", name="Done").check()
        kim.page.get_by_role("form", name="New item").get_by_label("Attachment").set_input_files(
            {"name": "pond-map.txt", "mimeType": "text/plain", "buffer": b"reeds to the north\n"}
        )
        add_item(kim.page, "Plan the pond party", "Bread is bad for ducks: bring oats.")
        neighbour.create("Fix the floating dock", priority=75)
        expect(row(kim.page, "Fix the floating dock")).to_have_count(1)
        expect(kim.page.locator(".tile-total strong")).to_have_text("4")
        shot(kim.page, "items-desktop")

        lee = arrive(people("lee", viewport=PHONE, unique=False), service, "phone")
        expect(lee.page.get_by_role("listitem")).to_have_count(4)
        shot(lee.page, "items-phone")

        for person in (kim, lee):
            person.page.goto(f"{service.url}/#/stream")
            expect(status(person.page)).to_contain_text("Live")
        first = neighbour.create("Feed the swans")
        neighbour.update(first["id"], status="completed")
        neighbour.delete(first["id"])
        for person, size in ((kim, "desktop"), (lee, "phone")):
            events = person.page.get_by_role("list", name="Events").get_by_role("listitem")
            expect(events).to_have_count(3)
            shot(person.page, f"stream-{size}")
    finally:
        neighbour.close()
