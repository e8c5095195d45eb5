"""The browser app in real Chromium: Debian's /usr/bin/chromium driven by Playwright, against
`duckcast serve --workers 2` with a private redis-server (one deployment per test module).

Playwright's own browser download is not used (this machine cannot fetch it); `.ci/run`
installs Debian's chromium when it is missing. Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, sync_playwright

from tests.conftest import RedisServer, free_port
from tests.e2e.conftest import ROOT, Deployment, DuckcastProcess

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking switches Chromium keeps dialling out, and this machine's
# closed network refuses it.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
PASSWORD = "correct horse battery"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# The smallest log the service keeps (it prunes past retention + 100): a test can push a
# page's resume point out of it with one bulk create, and see the `reset` path.
EVENT_RETENTION = 100
# What a page must never log: a CSP refusal means the app depends on something the policy
# forbids (an inline script or style, eval, another origin).
CSP_REFUSAL = re.compile(r"Content Security Policy|Refused to", re.IGNORECASE)


@dataclass
class Service:
    """One `duckcast serve --workers 2` that a test may stop and start again (same port, data
    and Redis), so a browser page can stay open across the restart."""

    deploy: Deployment
    redis: RedisServer
    data_dir: Path
    port: int
    proc: DuckcastProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = self.deploy.serve(
            "browser-serve",
            workers=2,
            data_dir=self.data_dir,
            port=self.port,
            REDIS_URL=self.redis.url,
            DUCKCAST_EVENT_RETENTION=str(EVENT_RETENTION),
        )

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.kill_group()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    logdir = tmp_path_factory.mktemp("browser")
    redis = RedisServer(logdir)
    redis.start()
    deploy = Deployment(logdir)
    try:
        svc = Service(deploy, redis, deploy.data_dir(), free_port())
        svc.start()
        yield svc
    finally:
        deploy.close()
        redis.stop(kill=True)


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run does it)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Person:
    """One user in a browser context of their own (their own cookie jar)."""

    username: str
    context: BrowserContext
    page: Page
    problems: list[str] = field(default_factory=list)
    user_id: int = 0

    def signed_up(self, base: str) -> Person:
        """Registers and signs in through the API of this context: the session cookie lands
        in the browser's jar, as after the sign-in form."""
        api = self.context.request
        r = api.post(f"{base}/api/register", data={"username": self.username, "password": PASSWORD})
        assert r.status == 201, r.text()
        r = api.post(f"{base}/api/login", data={"username": self.username, "password": PASSWORD})
        assert r.status == 200, r.text()
        self.user_id = r.json()["user"]["id"]
        return self


People = Callable[..., Person]


@pytest.fixture
def people(browser: Browser) -> Iterator[People]:
    """Makes people with a fresh context and page each; after the test, asserts that no page
    threw an uncaught error or was refused something by its Content-Security-Policy."""
    made: list[Person] = []

    def make(
        name: str = "user", viewport: dict[str, int] | None = None, unique: bool = True
    ) -> Person:
        context = browser.new_context(viewport=viewport or DESKTOP)
        context.set_default_timeout(15_000)
        page = context.new_page()
        person = Person(f"{name}_{secrets.token_hex(3)}" if unique else name, context, page)
        page.on("pageerror", lambda exc: person.problems.append(f"uncaught: {exc}"))

        def console(message: ConsoleMessage) -> None:
            if CSP_REFUSAL.search(message.text):
                person.problems.append(f"console: {message.text}")

        page.on("console", console)
        made.append(person)
        return person

    yield make
    problems = [p for person in made for p in person.problems]
    for person in made:
        person.context.close()
    assert not problems, problems


def shot(page: Page, name: str) -> Path:
    """A screenshot as a test artifact (artifacts/screenshots/, git-ignored)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), animations="disabled", full_page=False)
    return path
