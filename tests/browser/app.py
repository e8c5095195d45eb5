"""Finding things in the browser app the way a person does: by role and accessible name."""

from __future__ import annotations

import httpx
from playwright.sync_api import Locator, Page

from tests.browser.conftest import PASSWORD
from tests.e2e.conftest import register_and_login

LIVE_MS = 2_000  # the bound: a change from anyone shows within 2 s, without a reload


def status(page: Page) -> Locator:
    return page.get_by_role("status")


def row(page: Page, title: str) -> Locator:
    """The list item that shows `title`."""
    return page.get_by_role("listitem").filter(has_text=title)


def row_by_id(page: Page, item_id: int) -> Locator:
    return page.locator(f'.items > li[data-id="{item_id}"]')


def wait_for_seq(page: Page, seq: int) -> None:
    """Until the list has applied every change event up to `seq` (its data-seq)."""
    page.wait_for_function(
        "seq => Number(document.querySelector('.items')?.dataset.seq) >= seq", arg=seq
    )


def add_item(page: Page, title: str, description: str = "") -> int:
    """Creates an item through the "New item" form; returns its id once it is listed."""
    form = page.get_by_role("form", name="New item")
    form.get_by_label("Title").fill(title)
    form.get_by_label("Description").fill(description)
    form.get_by_role("button", name="Add").click()
    added = row(page, title)
    added.wait_for()
    return int(added.get_attribute("data-id") or 0)


class ApiUser:
    """A third person who changes things through the HTTP API, not a browser."""

    def __init__(self, base: str, username: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=15)
        self.headers = register_and_login(self.http, username, PASSWORD)

    def create(self, title: str, **fields: object) -> dict:
        r = self.http.post("/api/items", json={"title": title, **fields}, headers=self.headers)
        assert r.status_code == 201, r.text
        return r.json()

    def bulk(self, titles: list[str]) -> list[dict]:
        items = [{"title": t} for t in titles]
        r = self.http.post("/api/items/bulk", json={"items": items}, headers=self.headers)
        assert r.status_code == 201, r.text
        return list(r.json()["items"])

    def update(self, item_id: int, **fields: object) -> dict:
        r = self.http.patch(f"/api/items/{item_id}", json=fields, headers=self.headers)
        assert r.status_code == 200, r.text
        return r.json()

    def delete(self, item_id: int) -> None:
        r = self.http.delete(f"/api/items/{item_id}", headers=self.headers)
        assert r.status_code == 204, r.text

    def seq(self) -> int:
        """The store's latest change event, as of now."""
        r = self.http.get("/api/items", params={"limit": 1}, headers=self.headers)
        assert r.status_code == 200, r.text
        return int(r.json()["seq"])

    def close(self) -> None:
        self.http.close()
