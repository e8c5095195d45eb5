"""The other views in Chromium, and screenshots of them: the protobuf stream, errors in words
next to their field, a phone-sized screen, attachments, /docs with no network but the service."""

from __future__ import annotations

import re
import secrets
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Page, Route, expect

from tests.browser.app import ApiUser, add_item, row, row_by_id, status
from tests.browser.conftest import PASSWORD, PHONE, People, Person, Service, shot

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
    """Screenshots of the main views at desktop and phone sizes, as test artifacts in
    artifacts/screenshots/ (git-ignored; docs/screenshots/ holds the one the README shows).
    First in this module, so they show only the scene set up here. Each is taken once its
    view shows what it should: the sign-in form; the list with someone else's live items, a
    completed item, an attachment and statistics; the protobuf stream with decoded events."""
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


def test_protobuf_view_decodes_events(service: Service, people: People) -> None:
    """The #/stream view opens /ws/items in binary protobuf and shows each DomainEvent,
    decoded in the browser against /protos/duckcast.proto, as it comes."""
    viewer = people("pat").signed_up(service.url)
    viewer.page.goto(f"{service.url}/#/stream")
    expect(status(viewer.page)).to_contain_text("Live")
    writer = ApiUser(service.url, f"pbw_{secrets.token_hex(3)}")
    try:
        created = writer.create(f"Protobuf duck {secrets.token_hex(3)}", priority=7)
        writer.update(created["id"], status="completed")
    finally:
        writer.close()
    events = viewer.page.get_by_role("list", name="Events").get_by_role("listitem")
    first = events.filter(has_text="CREATED").filter(has_text=created["title"])
    expect(first).to_have_count(1)
    expect(first).to_contain_text(
        f"item #{created['id']} · active · v1 · owner {created['owner_id']}"
    )
    then = events.filter(has_text="UPDATED").filter(has_text=created["title"])
    expect(then).to_contain_text("completed · v2")


def test_errors_show_next_to_their_field(service: Service, people: People) -> None:
    """A 422 from the API is shown in words next to the field it names (the message is that
    field's accessible description and the field is marked invalid), for the sign-up form
    and for the new-item form; a 401 is said in words on the form."""
    p = people("eve")
    p.page.goto(service.url)
    p.page.get_by_label("Username").fill(p.username)
    p.page.get_by_label("Password").fill("short")
    p.page.get_by_role("button", name="Sign up").click()
    password = p.page.get_by_label("Password")
    expect(password).to_have_accessible_description(re.compile(r"should have at least 8"))
    expect(password).to_have_attribute("aria-invalid", "true")
    expect(p.page.get_by_label("Username")).not_to_have_attribute("aria-invalid", "true")

    p.page.get_by_label("Password").fill(PASSWORD)
    p.page.get_by_role("button", name="Sign in").click()  # not registered yet
    expect(
        p.page.get_by_role("alert").filter(has_text="nvalid username or password")
    ).to_be_visible()

    p.page.get_by_role("button", name="Sign up").click()
    expect(status(p.page)).to_contain_text("Live")
    form = p.page.get_by_role("form", name="New item")
    form.get_by_label("Title").fill("x" * 201)
    form.get_by_role("button", name="Add").click()
    title = form.get_by_label("Title")
    expect(title).to_have_accessible_description(re.compile(r"at most 200 characters"))
    expect(title).to_have_attribute("aria-invalid", "true")
    form.get_by_label("Title").fill("Short enough")
    form.get_by_role("button", name="Add").click()
    expect(row(p.page, "Short enough")).to_have_count(1)
    expect(title).not_to_have_attribute("aria-invalid", "true")


def no_horizontal_scroll(page: Page) -> None:
    widths = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], f"scrollWidth {widths[0]} > clientWidth {widths[1]}"


def test_phone_screen_has_no_horizontal_scroll(service: Service, people: People) -> None:
    """At 390x844 the sign-in form, the item list (with a long unbroken title and a long
    description) and the protobuf view fit the width: nothing scrolls sideways."""
    p = people("pho", viewport=PHONE)
    p.page.goto(service.url)
    expect(p.page.get_by_label("Username")).to_be_visible()
    no_horizontal_scroll(p.page)
    p.signed_up(service.url)
    p.page.reload()
    expect(status(p.page)).to_contain_text("Live")
    long_title = "Supercalifragilistic" * 8
    add_item(p.page, long_title, "https://example.invalid/" + "a" * 300)
    no_horizontal_scroll(p.page)
    p.page.goto(f"{service.url}/#/stream")
    expect(status(p.page)).to_contain_text("Live")
    no_horizontal_scroll(p.page)


def test_attachment_is_uploaded_and_linked(service: Service, people: People) -> None:
    """A file chosen in the new-item form is uploaded (POST /api/upload, multipart) and linked
    from the item's description; the link serves the same bytes."""
    p = people("att").signed_up(service.url)
    p.page.goto(service.url)
    expect(status(p.page)).to_contain_text("Live")
    form = p.page.get_by_role("form", name="New item")
    body = b"quack quack\n" * 10
    form.get_by_label("Attachment").set_input_files(
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": body}
    )
    title = f"With a file {secrets.token_hex(3)}"
    add_item(p.page, title, "See the notes")
    link = row(p.page, title).get_by_role("link", name="notes.txt")
    expect(link).to_be_visible()
    href = link.get_attribute("href") or ""
    assert re.fullmatch(r"/uploads/[0-9a-f]{32}\.txt", href), href
    fetched = p.context.request.get(service.url + href)
    assert fetched.status == 200
    assert fetched.body() == body


def test_docs_render_offline_under_a_strict_csp(service: Service, people: People) -> None:
    """/docs renders every operation of /openapi.json with every request to anywhere but the
    service refused (none is even attempted), and / and /docs carry a CSP that allows only
    this origin, with no inline script or style (the people fixture also fails the test on any
    CSP refusal the page logs)."""
    p = people("doc")
    refused: list[str] = []
    origin = urlsplit(service.url).netloc

    def only_the_service(route: Route) -> None:
        if urlsplit(route.request.url).netloc == origin:
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    p.context.route("**/*", only_the_service)
    p.page.goto(f"{service.url}/docs")
    spec = httpx.get(f"{service.url}/openapi.json").json()
    operations = sum(len(methods) for methods in spec["paths"].values())
    expect(p.page.locator(".opblock")).to_have_count(operations)
    expect(p.page.get_by_text("/api/items/{item_id}").first).to_be_visible()
    assert refused == []

    for path in ("/", "/docs"):
        policy = httpx.get(service.url + path).headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["default-src"] == "'self'"
        assert directives["script-src"] == "'self'"
        assert directives["style-src"] == "'self'"
        assert "unsafe" not in policy
