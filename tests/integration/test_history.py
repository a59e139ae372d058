"""The history page through the test client, on SQLite and PostgreSQL: order, paging, filters,
the detail page, and escaping of whatever a client sent."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine

from tests.conftest import PASSENGER, build_app, close_app, flush, postgres_schema
from tests.integration.seed import Page, Stored, passengers, store, traffic
from titanic_web.extensions import db
from titanic_web.models import SOURCES, OutcomeRow
from titanic_web.predictor import Predictor

PAGE_ROWS = 50  # HISTORY_PAGE_ROWS' default
BASE = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)

ROW_ID = re.compile(r'<tr data-id="([0-9a-f-]{36})">')
OLDER = re.compile(r'<a href="([^"]+)" rel="next" id="page-older">')
NEWER = re.compile(r'<a href="([^"]+)" rel="prev" id="page-newer">')
NEWEST = re.compile(r'<a href="([^"]+)" rel="first">')
ADMIN_KEY = "history-admin-key-0123456789"


def get(client: FlaskClient, url: str, status: int = 200) -> str:
    response = client.get(url)
    assert response.status_code == status, response.text[:2000]
    return response.text


def ids_on(page: str) -> list[str]:
    return ROW_ID.findall(page)


def link(pattern: re.Pattern[str], page: str) -> str | None:
    match = pattern.search(page)
    return None if match is None else html.unescape(match.group(1))


def walk(client: FlaskClient, url: str) -> list[str]:
    """Every id listed, following the Older links from the first page to the last."""
    seen: list[str] = []
    next_url: str | None = url
    while next_url is not None:
        page = get(client, next_url)
        ids = ids_on(page)
        assert 0 < len(ids) <= PAGE_ROWS
        seen += ids
        next_url = link(OLDER, page)
        assert len(seen) < 10_000, "the pages never end"
    return seen


def newest_first(rows: list[Stored]) -> list[str]:
    """The order the page promises: newest first; equal times by id, as the database orders uuids."""
    return [str(r.id) for r in sorted(rows, key=lambda r: (r.created_at, r.id.int), reverse=True)]


@pytest.fixture
def spread(app: Flask, predictor: Predictor) -> list[Stored]:
    """130 predictions over ten days of March 2026, seven at a time sharing one timestamp."""
    rows = traffic(predictor, 130, now=BASE)
    for i, row in enumerate(rows):
        row.created_at = BASE - timedelta(hours=2 * (i // 7))  # ties: the page must order them by id too
        row.model_version = "v2" if i % 4 == 0 else "v1"
    store(app, rows)
    return rows


# -- an empty database ---------------------------------------------------------------------------


def test_no_predictions_yet(client: FlaskClient) -> None:
    page = get(client, "/history")

    assert Page(page).text("history-count").startswith("0 predictions.")
    assert "No stored prediction matches." in page
    assert ids_on(page) == []
    assert link(OLDER, page) is None and link(NEWER, page) is None


# -- paging --------------------------------------------------------------------------------------


def test_pages_go_newest_first_and_cover_every_row_once(client: FlaskClient, spread: list[Stored]) -> None:
    expected = newest_first(spread)

    first = get(client, "/history")

    assert ids_on(first) == expected[:PAGE_ROWS]
    assert Page(first).text("history-count").startswith("130 predictions.")
    assert link(NEWER, first) is None
    assert walk(client, "/history") == expected


def test_newer_goes_back_a_page(client: FlaskClient, spread: list[Stored]) -> None:
    expected = newest_first(spread)
    first = get(client, "/history")
    second = get(client, link(OLDER, first) or "")
    third = get(client, link(OLDER, second) or "")
    assert ids_on(third) == expected[2 * PAGE_ROWS :]
    assert link(OLDER, third) is None

    back_to_second = get(client, link(NEWER, third) or "")
    back_to_first = get(client, link(NEWER, back_to_second) or "")

    assert ids_on(back_to_second) == expected[PAGE_ROWS : 2 * PAGE_ROWS]
    assert ids_on(back_to_first) == expected[:PAGE_ROWS]
    assert link(NEWER, back_to_first) is None


def test_a_forged_page_position_is_refused(client: FlaskClient) -> None:
    page = get(client, "/history?after=yesterday", status=400)
    assert "after is not a page position this site made" in html.unescape(page)


# -- filters -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "keep"),
    [
        ("source=api", lambda r: r.source == "api"),
        ("source=batch&verdict=survived", lambda r: r.source == "batch" and r.survived == 1),
        ("verdict=died", lambda r: r.survived == 0),
        ("model=v2", lambda r: r.model_version == "v2"),
        ("from=2026-03-08", lambda r: r.created_at >= datetime(2026, 3, 8, tzinfo=UTC)),
        # "to" includes its whole day
        ("to=2026-03-07", lambda r: r.created_at < datetime(2026, 3, 8, tzinfo=UTC)),
        (
            "from=2026-03-06&to=2026-03-06&model=v1",
            lambda r: r.created_at.date().isoformat() == "2026-03-06" and r.model_version == "v1",
        ),
        ("source=form&model=v3", lambda r: False),
    ],
)
def test_filters(client: FlaskClient, spread: list[Stored], query: str, keep: Callable[[Stored], bool]) -> None:
    expected = newest_first([r for r in spread if keep(r)])

    first = get(client, f"/history?{query}")

    count = Page(first).text("history-count")
    assert count.startswith(f"{len(expected)} prediction{'' if len(expected) == 1 else 's'} match")
    if expected:
        assert walk(client, f"/history?{query}") == expected  # the filters stay on the page links
    else:
        assert "No stored prediction matches." in first


def test_every_page_link_keeps_the_filters(client: FlaskClient, spread: list[Stored]) -> None:
    query = "model=v1&to=2026-03-10"
    first = get(client, f"/history?{query}")
    second = get(client, link(OLDER, first) or "")

    for url in (link(NEWEST, second), link(NEWER, second), link(OLDER, first)):
        assert url is not None and url.startswith("/history?")
        assert query in url
    assert link(NEWEST, second) == f"/history?{query}"
    assert ids_on(get(client, link(NEWEST, second) or "")) == ids_on(first)


def test_the_form_keeps_the_chosen_filters(client: FlaskClient, spread: list[Stored]) -> None:
    page = get(client, "/history?source=batch&model=v2&verdict=died&from=2026-03-01&to=2026-03-09")

    assert '<option value="batch" selected>' in page
    assert '<option value="v2" selected>' in page
    assert '<option value="died" selected>' in page
    assert 'name="from" value="2026-03-01"' in page and 'name="to" value="2026-03-09"' in page
    download = re.search(r'<a href="([^"]+)" id="history-download"', page)
    assert download is not None
    assert html.unescape(download.group(1)) == (
        "/history/export.csv?source=batch&model=v2&verdict=died&from=2026-03-01&to=2026-03-09"
    )
    assert [o for o in re.findall(r'<option value="([^"]*)"', page) if o.startswith("v")] == ["v1", "v2"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("source=email", "source must be one of api, form, batch, got 'email'"),
        ("verdict=maybe", "verdict must be one of survived, died, got 'maybe'"),
        ("from=March", "from must be a date as YYYY-MM-DD, got 'March'"),
        ("to=2026-02-30", "to must be a date as YYYY-MM-DD, got '2026-02-30'"),
        # ISO spellings the page's date inputs cannot show: kept, they would be dropped unseen
        ("from=20260301", "from must be a date as YYYY-MM-DD, got '20260301'"),
        ("to=2026-W10-1", "to must be a date as YYYY-MM-DD, got '2026-W10-1'"),
        ("from=2026-03-09&to=2026-03-01", "from (2026-03-09) must not be after to (2026-03-01)"),
        ("to=9999-12-31", "to must be a date before 9999-12-31, got '9999-12-31'"),  # its day never ends
        ("model=" + "v" * 65, "model must be a model version of at most 64 characters"),
        ("model=v1%00", "model must be printable text, got 'v1\\x00'"),  # PostgreSQL text cannot hold NUL
        ("model=v1%0A", "model must be printable text, got 'v1\\n'"),
    ],
)
def test_bad_filters_are_named(client: FlaskClient, query: str, message: str) -> None:
    page = get(client, f"/history?{query}", status=400)

    assert Page(page).text("history-error") == message
    assert ids_on(page) == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("to=9999-12-31", "to must be a date before 9999-12-31"),
        ("model=%00", "model must be printable text"),
    ],
)
def test_bad_filters_on_the_download_are_named(app: Flask, query: str, message: str) -> None:
    app.config["ADMIN_API_KEYS"] = (ADMIN_KEY,)

    with app.test_client().get(f"/history/export.csv?{query}", headers={"X-API-Key": ADMIN_KEY}) as response:
        assert response.status_code == 400  # before anything is streamed
        assert message in response.get_data(as_text=True)


# -- details and escaping ------------------------------------------------------------------------


def test_each_row_links_to_its_stored_features_and_input(client: FlaskClient, app: Flask, predictor: Predictor) -> None:
    passenger = passengers()[0]
    [row] = traffic(predictor, 1, pool=[passenger])
    row.outcome, row.latency_ms = 1, 12.5
    store(app, [row])
    listing = get(client, "/history")
    assert f'href="/history/{row.id}"' in listing

    page = Page(get(client, f"/history/{row.id}"))

    raw = {cells[0]: cells[1] for cells in page.table("raw-input")}
    assert raw["Name"] == passenger["Name"]
    assert raw["Pclass"] == str(passenger["Pclass"])
    assert raw["Cabin"] == "–"  # none given
    shown = {cells[0]: cells[1] for cells in page.table("features")}
    assert set(shown) == set(row.features)
    assert shown["Title"] == row.features["Title"]
    assert shown["Age"] == f"{row.features['Age']:g}"
    assert page.text("probability") == f"{row.probability * 100:.1f}%"
    assert page.text("outcome").startswith("survived (recorded ")
    facts = page.text("prediction-facts")
    assert f"Source {row.source}" in facts and "Latency 12.50 ms" in facts


def test_the_detail_page_gives_its_times_in_utc_whatever_the_server_zone(
    postgres: Engine, model_dir: Path, tmp_path: Path, predictor: Predictor
) -> None:
    """PostgreSQL returns times in the session's zone (here New York's): both shown times must be UTC."""
    [row] = traffic(predictor, 1, now=BASE)
    row.created_at, row.outcome = BASE, None  # the outcome is stored below, with its time
    recorded_at = BASE + timedelta(hours=3, minutes=4)
    with postgres_schema(postgres) as url:
        app = build_app(model_dir, tmp_path / "zoned.db", database_url=f"{url}%20-ctimezone%3DAmerica/New_York")
        try:
            store(app, [row])
            with app.app_context():
                db.session.add(OutcomeRow(prediction_id=row.id, survived=1, recorded_at=recorded_at))
                db.session.commit()
            page = Page(get(app.test_client(), f"/history/{row.id}"))
        finally:
            close_app(app)

    assert "Made 2026-03-10 12:00:00 UTC" in page.text("prediction-facts")
    assert page.text("outcome") == "survived (recorded 2026-03-10 15:04 UTC)"


def test_an_unknown_prediction_is_404(client: FlaskClient) -> None:
    missing = uuid.uuid4()
    page = get(client, f"/history/{missing}", status=404)
    assert f"no stored prediction has the id {missing}" in page
    get(client, "/history/not-a-uuid", status=404)


HOSTILE = '<script>alert("history")</script>, Mr. <img src=x onerror=alert(1)>'


def test_what_a_client_sent_is_escaped_everywhere(client: FlaskClient, app: Flask) -> None:
    response = client.post("/api/predict", json={**PASSENGER, "Name": HOSTILE, "Ticket": "<b>T</b>"})
    assert response.status_code == 200, response.text
    prediction_id = response.get_json()["predictions"][0]["id"]
    flush(app)

    listing = get(client, "/history")
    detail = get(client, f"/history/{prediction_id}")
    reflected = get(client, '/history?model=<script>alert("model")</script>')

    for page in (listing, detail):
        assert "<script>alert" not in page and "<img src=x" not in page and "<b>T</b>" not in page
        assert "&lt;script&gt;alert(&#34;history&#34;)&lt;/script&gt;" in page
    assert Page(listing).table("history-table")[1][2] == HOSTILE  # shown as text, exactly
    assert "&lt;b&gt;T&lt;/b&gt;" in detail
    assert "<script>alert" not in reflected
    assert "&lt;script&gt;alert(&#34;model&#34;)&lt;/script&gt;" in reflected


def test_source_and_outcome_columns(client: FlaskClient, app: Flask, predictor: Predictor) -> None:
    rows = traffic(predictor, 6)
    store(app, rows)

    table = Page(get(client, "/history")).table("history-table")

    assert table[0] == [
        "time (UTC)",
        "passenger",
        "name",
        "verdict",
        "probability",
        "model",
        "source",
        "latency",
        "outcome",
    ]
    for cells, row in zip(table[1:], rows, strict=True):  # traffic() makes them newest first
        assert cells[1] == str(row.passenger_id)
        assert cells[3] == ("survived" if row.survived else "died")
        assert cells[4] == f"{row.probability * 100:.1f}%"
        assert cells[6] == row.source and row.source in SOURCES
        assert cells[7] == ("" if row.latency_ms is None else f"{row.latency_ms:.1f} ms")
        assert cells[8] == ("" if row.outcome is None else ("survived" if row.outcome else "died"))
