"""The dashboard and the history in a real browser (Debian's Chromium) against a real gunicorn.

What the test client cannot show: the charts as a browser draws them (inline SVG styled by
the stylesheet under the server's Content-Security-Policy, with no script), and the history's
filter form, links and pages as a person follows them. The test also takes the dashboard's
screenshot for the README.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Page, Response

from tests.browser.conftest import Site, running_site
from tests.conftest import build_app, close_app
from tests.integration.seed import Stored, passengers, store
from titanic_web.features import FEATURES
from titanic_web.models import now_utc
from titanic_web.predictor import Predictor

pytestmark = pytest.mark.browser

OLDER_VERSION = "3f2a9c1e7b04"  # a model version served before the current one
#: A change in traffic during the last four hours: elderly third-class men travelling alone.
SHIFTED = {
    "Pclass": 3,
    "Sex": "male",
    "Age": 71.0,
    "Name": "Smith, Mr. John",
    "SibSp": 0,
    "Parch": 0,
    "Ticket": "A/5 3902",
    "Fare": 7.25,
    "Cabin": None,
    "Embarked": "S",
    "PassengerId": None,
}


def a_day_of_traffic(predictor: Predictor, now: datetime) -> list[Stored]:
    """22 hours of test.csv passengers, the last four joined by SHIFTED; the same picture every run.

    Times are whole minutes after the start of an hour, counted back from the current hour,
    so the charts' bars fall in the same places whenever the test runs.
    """
    hour = now.replace(minute=0, second=0, microsecond=0)
    normal = passengers()
    answers = predictor.predict(normal)
    shifted = predictor.predict([SHIFTED])[0]
    rows: list[Stored] = []
    i = 0
    for hours_ago in range(22, 0, -1):
        version = OLDER_VERSION if hours_ago > 12 else predictor.version
        for j in range(18 + (hours_ago * 7) % 13):
            k = i % len(normal)
            answer = answers[k]
            rows.append(
                Stored(
                    created_at=hour - timedelta(hours=hours_ago) + timedelta(minutes=2 + j * 2),
                    survived=answer.survived,
                    probability=answer.probability,
                    features=answer.features,
                    raw_input=normal[k],
                    source=("api", "form", "batch", "api")[i % 4],
                    model_version=version,
                    latency_ms=round(1.5 + (i * 37) % 90 / 10, 2),
                    # Outcomes for every third passenger; one in six of them goes against the model.
                    outcome=None if i % 3 else (answer.survived if i % 18 else 1 - answer.survived),
                    passenger_id=normal[k]["PassengerId"],
                )
            )
            i += 1
        if hours_ago <= 4:
            for j in range(40):
                rows.append(
                    Stored(
                        created_at=hour - timedelta(hours=hours_ago) + timedelta(minutes=1 + j),
                        survived=shifted.survived,
                        probability=shifted.probability,
                        features=shifted.features,
                        raw_input=SHIFTED,
                        source="api",
                        model_version=predictor.version,
                        latency_ms=round(1.2 + (j * 13) % 40 / 10, 2),
                    )
                )
    return rows


@pytest.fixture(scope="module")
def monitored(model_dir: Path, tmp_path_factory: pytest.TempPathFactory, predictor: Predictor) -> Iterator[Site]:
    """A server of its own whose database holds a day of traffic (nothing else writes to it)."""
    folder = tmp_path_factory.mktemp("browser-monitoring")
    with running_site(model_dir, folder) as site:
        seeder = build_app(model_dir, site.db_path, tables=False)
        try:
            store(seeder, a_day_of_traffic(predictor, now_utc()))
        finally:
            close_app(seeder)
        yield site


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> Predictor:
    return Predictor.from_dir(model_dir)


@pytest.fixture
def console_errors(page: Page) -> list[str]:
    """Every error the page logs (such as a Content-Security-Policy refusal), and every failed load."""
    errors: list[str] = []

    def keep(message: ConsoleMessage) -> None:
        # A failed load is logged without its address; the response handler below names it.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(message.text)

    def check(response: Response) -> None:
        if response.status >= 400 and not response.url.endswith("/favicon.ico"):  # the site has no icon
            errors.append(f"{response.status} {response.url}")

    page.on("console", keep)
    page.on("response", check)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


def stored_count(site: Site) -> int:
    predictions, _ = site.stored_ids()
    return len(predictions)


def test_dashboard_draws_every_chart_and_flags_the_drift(
    monitored: Site, page: Page, console_errors: list[str], screenshots: Path
) -> None:
    response = page.goto(f"{monitored.server.base_url}/dashboard")

    assert response is not None and response.status == 200
    assert page.locator("#total-predictions").inner_text() == f"{stored_count(monitored):,}"
    # Four charts drawn, each with bars or a line the stylesheet coloured (not the fallback fill).
    for chart in ("#chart-volume", "#chart-survival", "#chart-probability", "#chart-latency"):
        svg = page.locator(chart)
        assert svg.is_visible(), chart
        box = svg.bounding_box()
        assert box is not None and box["width"] > 250 and box["height"] > 100, (chart, box)
    survived_bar = page.locator("#chart-probability rect.bar.survived").first
    fill = survived_bar.evaluate("el => getComputedStyle(el).fill")
    assert fill == "rgb(30, 122, 70)", fill  # --good from style.css: the stylesheet applies to the SVG
    assert page.locator("#chart-volume rect.bar").count() == 25  # one an hour, and the partial hour
    assert page.locator("#chart-survival polyline.line").count() >= 1
    # The drift table: every feature measured; the elderly men show.
    rows = page.locator("#table-drift tbody tr")
    assert rows.count() == len(FEATURES)
    assert page.locator("#table-drift tr.feature-Age .badge").inner_text() == "drift"
    assert page.locator("#table-drift td.not-enough").count() == 0
    accuracy = page.locator("#table-accuracy tbody tr")
    assert accuracy.count() == 2  # the older model and the current one
    assert console_errors == [], console_errors  # nothing refused: no inline style, no script

    # The distributions behind the numbers open without JavaScript (a <details> element).
    page.get_by_text("Training and served distributions, feature by feature").click()
    assert page.locator("#chart-drift-Age").is_visible()
    page.get_by_text("Training and served distributions, feature by feature").click()

    # The hours on the time axis and the window's dates change with the clock: masked, the
    # picture is the same on every run, so the tests leave no changed file in the checkout.
    page.screenshot(
        path=screenshots / "dashboard.png",
        full_page=True,
        mask=[
            page.locator(".lead"),
            page.locator("#chart-volume text.x-label"),
            page.locator("#chart-survival text.x-label"),
        ],
        mask_color="#d5dae3",
    )
    data = (screenshots / "dashboard.png").read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) < 800_000, len(data)


def test_windows_are_links_that_change_the_figures(monitored: Site, page: Page) -> None:
    page.goto(f"{monitored.server.base_url}/dashboard")
    day = int(page.locator("#total-predictions").inner_text().replace(",", ""))

    page.get_by_role("link", name="Last hour").click()

    assert page.url.endswith("/dashboard?window=1h")
    assert page.locator("nav.windows a.current").inner_text() == "Last hour"
    hour = int(page.locator("#total-predictions").inner_text().replace(",", ""))
    assert hour < day
    # At most 70 predictions an hour were stored: below the 200 drift needs, whatever the minute.
    assert page.locator("#table-drift td.not-enough").count() == len(FEATURES)
    page.get_by_role("link", name="Everything").click()
    assert int(page.locator("#total-predictions").inner_text().replace(",", "")) == day


def test_history_filters_pages_and_details(monitored: Site, page: Page, console_errors: list[str]) -> None:
    page.goto(monitored.server.base_url + "/")
    page.get_by_role("link", name="History").click()

    total = stored_count(monitored)
    assert page.locator("#history-count").inner_text().startswith(f"{total:,} predictions.")
    assert page.locator("#history-table tbody tr").count() == 50
    times = page.locator("#history-table tbody tr td:first-child").all_inner_texts()
    assert times == sorted(times, reverse=True), "not newest first"

    # Filter: survived, from the form; every row listed says so, and the filter stays chosen.
    page.locator("select[name='verdict']").select_option("survived")
    page.locator("select[name='source']").select_option("form")
    page.get_by_role("button", name="Filter").click()
    assert "verdict=survived" in page.url and "source=form" in page.url
    verdicts = page.locator("#history-table td.verdict-cell").all_inner_texts()
    assert verdicts and set(verdicts) == {"survived"}
    assert set(page.locator("#history-table tbody td:nth-child(7)").all_inner_texts()) == {"form"}
    assert page.locator("select[name='verdict']").input_value() == "survived"
    filtered = int(re.match(r"[\d,]+", page.locator("#history-count").inner_text()).group(0).replace(",", ""))  # type: ignore[union-attr]
    assert 0 < filtered < total

    # Older, then the details of the first row there.
    page.get_by_role("link", name="Clear").click()
    first_page = page.locator("#history-table tbody tr").first.get_attribute("data-id")
    page.get_by_role("link", name="Older →").click()
    second_first = page.locator("#history-table tbody tr").first
    prediction_id = second_first.get_attribute("data-id")
    assert prediction_id != first_page
    name = second_first.locator("td.name").inner_text()
    second_first.locator("td:first-child a").click()
    assert page.url.endswith(f"/history/{prediction_id}")
    assert page.get_by_role("heading", name="Features the model saw").is_visible()
    raw = dict(
        zip(
            page.locator("#raw-input th").all_inner_texts(),
            page.locator("#raw-input td").all_inner_texts(),
            strict=True,
        )
    )
    assert raw["Name"] == name
    assert page.locator("#features th").count() == len(FEATURES)
    assert console_errors == [], console_errors
