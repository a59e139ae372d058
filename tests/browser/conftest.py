"""Browser fixtures: a real gunicorn serving the app, and Debian's Chromium driven by Playwright.

Playwright never downloads a browser here: it launches /usr/bin/chromium, which
`make test` installs from Debian when it is missing. A missing browser fails the
tests; it never skips them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from tests.system.server import GunicornServer, init_db, server_env
from titanic_web.config import PROJECT_ROOT

#: Debian's Chromium (package `chromium`); the only browser these tests use.
CHROMIUM = Path("/usr/bin/chromium")
#: Root cannot use Chromium's sandbox; /dev/shm may be small in containers.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1000, "height": 800}
ACTION_TIMEOUT_MS = 10_000  # any one click, fill or wait: fail fast with a message, never hang
ROW_WAIT = 10.0  # seconds for an answered prediction to reach both tables


def stored_key(prediction_id: str) -> str:
    """How SQLAlchemy's Uuid column stores the id the page shows, in SQLite: 32 hex digits."""
    return uuid.UUID(prediction_id).hex


@dataclass(frozen=True)
class Site:
    """A running server and the SQLite file it records into."""

    server: GunicornServer
    db_path: Path

    @property
    def url(self) -> str:
        return f"{self.server.base_url}/"

    def stored_ids(self) -> tuple[set[str], set[str]]:
        """The prediction ids (32 hex digits, as stored) in predictions and in feature_store."""
        with closing(sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)) as conn:
            conn.execute("BEGIN")  # one read transaction: both tables from the same moment
            predictions = {row[0] for row in conn.execute("SELECT id FROM predictions")}
            features = {row[0] for row in conn.execute("SELECT prediction_id FROM feature_store")}
            conn.rollback()
        return predictions, features

    def stored(self, prediction_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The predictions row and the feature_store raw input of one prediction (its uuid as shown)."""
        key = stored_key(prediction_id)
        with closing(sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)) as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute(
                "SELECT passenger_id, survived, probability, model_version, source FROM predictions WHERE id = ?",
                (key,),
            ).fetchone()
            raw = conn.execute("SELECT raw_input FROM feature_store WHERE prediction_id = ?", (key,)).fetchone()
        assert row is not None and raw is not None, f"prediction {prediction_id} is not in both tables"
        return dict(row), json.loads(raw["raw_input"])

    def settle(self) -> None:
        """Wait until the writer has delivered every answer given so far (the server has one
        worker, so its backlog in /api/ready is the whole spool): a count taken then is final."""
        deadline = time.monotonic() + ROW_WAIT
        while True:
            backlog = requests.get(f"{self.server.base_url}/api/ready", timeout=10).json()["backlog"]["rows"]
            if backlog == 0:
                return
            assert time.monotonic() < deadline, f"{backlog} answered rows still spooled after {ROW_WAIT} s"
            time.sleep(0.05)

    def settled_ids(self) -> tuple[set[str], set[str]]:
        """:meth:`stored_ids` once nothing answered is still on its way."""
        self.settle()
        return self.stored_ids()

    def wait_for_ids(self, done: Callable[[set[str], set[str]], bool]) -> tuple[set[str], set[str]]:
        """Poll the tables until done(predictions, features) holds; return the last look either way."""
        deadline = time.monotonic() + ROW_WAIT
        ids = self.stored_ids()
        while not done(*ids) and time.monotonic() < deadline:
            time.sleep(0.1)
            ids = self.stored_ids()
        return ids


@contextmanager
def running_site(model_dir: Path, folder: Path, **settings: str) -> Iterator[Site]:
    """gunicorn -c gunicorn.conf.py wsgi:app from the checkout on a fresh SQLite file in `folder`.

    One worker: its writer delivers the spool in order, so once a later prediction's rows
    are in, everything answered before it has had its chance to be written.
    """
    db_path = folder / "titanic.db"
    settings.setdefault("BATCH_DIR", str(folder / "batches"))  # batch results stay out of the checkout
    env = server_env(
        DATABASE_URL=f"sqlite:///{db_path}",
        MODEL_DIR=str(model_dir),
        SPOOL_DIR=str(folder / "spool"),
        SECRET_KEY="browser-test-secret-key",
        **settings,
    )
    init_db(PROJECT_ROOT, env)
    assert db_path.exists(), "flask init-db did not create the SQLite file"
    with GunicornServer(PROJECT_ROOT, env, folder / "gunicorn.log", workers=1) as server:
        yield Site(server, db_path)


#: The README's pictures. The tests write their screenshots here only with UPDATE_SCREENSHOTS=1
#: (`make screenshots`); otherwise into their own temporary folder, so that `make test` leaves
#: the checkout as it found it (a new Chromium or new fonts change a picture's bytes).
DOCS_SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where this test writes its screenshots (see DOCS_SCREENSHOTS)."""
    folder = DOCS_SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def site(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The app as production runs it (CSRF tokens valid for the default hour)."""
    with running_site(model_dir, tmp_path_factory.mktemp("browser")) as running:
        yield running


@pytest.fixture(scope="session")
def batch_site(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A server for the batch page whose progress events come every BATCH_CHUNK_ROWS=500 rows."""
    with running_site(model_dir, tmp_path_factory.mktemp("browser-batch"), BATCH_CHUNK_ROWS="500") as running:
        yield running


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    """Playwright's driver (a node process shipped in the wheel), stopped for sure at the end:
    stop() ends it and closes its pipes and event loop rather than leaving them to exit time."""
    driver = sync_playwright().start()
    try:
        yield driver
    finally:
        driver.stop()


@pytest.fixture(scope="session", autouse=True)
def chromium() -> Path:
    """Debian's Chromium, checked first (before training and servers): missing, every test here fails."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run `make test`, which installs Debian's chromium "
            "(or: apt-get install -y chromium). Playwright's own browser downloads are not used.",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture(scope="session")
def browser(playwright: Playwright, chromium: Path) -> Iterator[Browser]:
    """Debian's Chromium, headless; never a browser Playwright downloaded."""
    browser = playwright.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile per test: its own cookies, so its own session and CSRF token."""
    context = browser.new_context(viewport=VIEWPORT, locale="en-GB")
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    try:
        yield context
    finally:
        context.close()


def watch_csp(page: Page) -> list[str]:
    """Collect the page's Content-Security-Policy violations (Chromium reports each on the console)."""
    violations: list[str] = []
    page.on(
        "console",
        lambda message: violations.append(message.text) if "Content Security Policy" in message.text else None,
    )
    return violations


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    """A new tab; the test fails if anything on it broke the Content-Security-Policy (inline script or style)."""
    page = context.new_page()
    violations = watch_csp(page)
    yield page
    assert not violations, "the page broke its Content-Security-Policy:\n" + "\n".join(violations)
