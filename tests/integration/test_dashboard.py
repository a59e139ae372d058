"""The dashboard through the test client, on SQLite and PostgreSQL: every figure and table
checked against numbers worked out in Python from the rows the test stored."""

from __future__ import annotations

import math
import re
from collections import Counter
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import TEST_CSV, flush
from tests.integration.conftest import MakeApp
from tests.integration.seed import Page, Stored, passengers, store, traffic
from titanic_web.features import FEATURES
from titanic_web.models import now_utc
from titanic_web.predictor import Predictor

WINDOWS = ("1h", "24h", "7d", "30d", "all")


def dashboard(client: FlaskClient, window: str | None = None) -> Page:
    response = client.get("/dashboard" + (f"?window={window}" if window else ""))
    assert response.status_code == 200, response.text[:2000]
    assert response.mimetype == "text/html"
    return Page(response.text)


def probability_bin(p: float) -> int:
    return next((i for i in range(9) if p < (i + 1) / 10), 9)


def drift_rows(page: Page) -> dict[str, list[str]]:
    """The drift table by feature: [PSI, band, test, statistic, p-value] or ["not enough data ..."]."""
    table = page.table("table-drift")
    assert table[0] == ["feature", "PSI", "band", "test", "statistic", "p-value"]
    return {row[0]: row[1:] for row in table[1:]}


def bands(page: Page) -> dict[str, str]:
    return {name: cells[1] for name, cells in drift_rows(page).items()}


@pytest.fixture
def three_ages(app: Flask, predictor: Predictor) -> dict[str, list[Stored]]:
    """Predictions in the last hour, 2 to 20 hours ago, and 40 to 45 days ago: no row near a window's edge."""
    now = now_utc()
    groups = {
        "recent": traffic(predictor, 120, now=now - timedelta(minutes=1), spacing=timedelta(seconds=20)),
        "today": traffic(predictor, 150, now=now - timedelta(hours=2), spacing=timedelta(minutes=7)),
        "old": traffic(predictor, 30, now=now - timedelta(days=40), spacing=timedelta(hours=4)),
    }
    for row in groups["today"][:10]:
        row.model_version = "v2"  # a second version: ten rows, two of them with outcomes
    store(app, [row for rows in groups.values() for row in rows])
    return groups


# -- an empty database ---------------------------------------------------------------------------


@pytest.mark.parametrize("window", [None, *WINDOWS])
def test_every_window_of_an_empty_database(client: FlaskClient, window: str | None) -> None:
    page = dashboard(client, window)

    assert page.text("total-predictions") == "0"
    assert page.text("survival-rate") == "–"
    assert page.text("latency-none") == "none recorded"
    assert "No prediction in this window recorded its latency" in page.text("latency-missing")
    assert "No outcome has been recorded" in page.text("accuracy-none")
    assert page.table("table-traffic")[1:] == [["no predictions in this window"]]
    assert [row[1] for row in page.table("table-probability")[1:]] == ["0"] * 10
    drift = drift_rows(page)
    assert list(drift) == list(FEATURES)
    for cells in drift.values():
        assert cells == ["not enough data (0 of 200 predictions needed)"]
    assert page.text("drifted-count") == "–"


def test_charts_are_inline_svg_without_scripts_or_style_attributes(client: FlaskClient) -> None:
    html = client.get("/dashboard").text

    assert html.count('<svg class="chart"') == 3  # volume, survival rate, probabilities (no latency yet)
    assert "no predictions in this window" in html
    assert "<script" not in html
    assert "style=" not in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # nothing from elsewhere


def test_an_unknown_window_is_refused_by_name(client: FlaskClient) -> None:
    response = client.get("/dashboard?window=2w")

    assert response.status_code == 400
    assert "unknown window &#39;2w&#39;: choose one of 1h, 24h, 7d, 30d, all" in response.text


# -- a seeded database ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "groups"),
    [
        ("1h", ["recent"]),
        ("24h", ["recent", "today"]),
        (None, ["recent", "today"]),
        ("7d", ["recent", "today"]),
        ("30d", ["recent", "today"]),
        ("all", ["recent", "today", "old"]),
    ],
)
def test_figures_match_the_rows_in_the_window(
    client: FlaskClient, three_ages: dict[str, list[Stored]], window: str | None, groups: list[str]
) -> None:
    rows = [row for group in groups for row in three_ages[group]]

    page = dashboard(client, window)

    assert page.text("total-predictions") == f"{len(rows):,}"
    survived = sum(r.survived for r in rows)
    assert page.text("survival-rate") == f"{survived / len(rows) * 100:.1f}%"
    latencies = [r.latency_ms for r in rows if r.latency_ms is not None]
    for q in (50, 90, 99):
        # PostgreSQL's percentile_cont and the SQLite path both interpolate between ranks, as numpy's default does.
        assert page.text(f"latency-p{q}") == f"{np.percentile(latencies, q):.2f} ms"
    histogram = Counter(probability_bin(r.probability) for r in rows)
    assert [int(row[1].replace(",", "")) for row in page.table("table-probability")[1:]] == [
        histogram[i] for i in range(10)
    ]
    accuracy: dict[str, list[int]] = {}
    for r in rows:
        if r.outcome is not None:
            tally = accuracy.setdefault(r.model_version, [0, 0])
            tally[0] += 1
            tally[1] += int(r.survived == r.outcome)
    shown = {row[0]: row[1:] for row in page.table("table-accuracy")[1:]}
    assert shown == {
        version: [str(n), str(right), f"{right / n * 100:.1f}%"] for version, (n, right) in accuracy.items()
    }


def test_traffic_per_hour_matches_the_rows(client: FlaskClient, three_ages: dict[str, list[Stored]]) -> None:
    rows = three_ages["recent"] + three_ages["today"]
    hours: dict[str, list[int]] = {}
    for r in rows:
        start = r.created_at.replace(minute=0, second=0, microsecond=0).strftime("%Y-%m-%d %H:%M")
        tally = hours.setdefault(start, [0, 0])
        tally[0] += 1
        tally[1] += r.survived

    table = dashboard(client, "24h").table("table-traffic")

    assert table[0] == ["from (UTC)", "predictions", "predicted to survive", "rate"]
    assert table[1:] == [[hour, str(n), str(s), f"{s / n * 100:.1f}%"] for hour, (n, s) in sorted(hours.items())]


def test_charts_have_a_bar_per_bucket(client: FlaskClient, three_ages: dict[str, list[Stored]]) -> None:
    html = client.get("/dashboard?window=1h").text

    volume = re.search(r'<svg class="chart" id="chart-volume".*?</svg>', html, re.S)
    assert volume is not None
    bars = re.findall(r'<rect class="bar [^"]*" x="[^"]+" y="[^"]+" width="[^"]+" height="([^"]+)"', volume.group(0))
    assert len(bars) in (61, 62)  # one a minute, plus the partial minutes at both ends
    assert sum(float(h) > 0 for h in bars) >= 35  # 120 predictions 20 s apart fill 40 minutes
    probability = re.search(r'<svg class="chart" id="chart-probability".*?</svg>', html, re.S)
    assert probability is not None
    assert probability.group(0).count('class="bar died"') == 5
    assert probability.group(0).count('class="bar survived"') == 5


def test_recorder_state_is_shown(client: FlaskClient) -> None:
    page = dashboard(client)

    assert page.text("recorder-backlog") == "0 rows"
    state = page.text("recorder-state")
    assert "Recording on" in state
    assert "Spooled, not yet written 0 rows" in state


def test_ten_thousand_rows(client: FlaskClient, app: Flask, predictor: Predictor) -> None:
    rows = traffic(predictor, 10_000, spacing=timedelta(seconds=5))  # the last 14 hours
    store(app, rows)

    page = dashboard(client)

    assert page.text("total-predictions") == "10,000"
    survived = sum(r.survived for r in rows)
    assert page.text("survival-rate") == f"{survived / 100:.1f}%"
    assert sum(int(row[1].replace(",", "")) for row in page.table("table-probability")[1:]) == 10_000
    assert sum(int(row[1].replace(",", "")) for row in page.table("table-traffic")[1:]) == 10_000
    drift = drift_rows(page)
    assert all(len(cells) == 5 for cells in drift.values()), drift  # measured, every feature
    # test.csv's passengers over and over: the training data's population.
    assert set(bands(page).values()) <= {"stable", "moderate"}, bands(page)
    assert page.text("drifted-count") == f"0 of {len(FEATURES)}"


# -- drift ---------------------------------------------------------------------------------------


def post_passengers(client: FlaskClient, body: Any, content_type: str = "application/json") -> None:
    if content_type == "application/json":
        response = client.post("/api/predict", json=body)
    else:
        response = client.post("/api/predict", data=body, content_type=content_type)
    assert response.status_code == 200, response.text[:2000]


def test_traffic_like_the_training_data_shows_no_drift(client: FlaskClient, app: Flask) -> None:
    post_passengers(client, TEST_CSV.read_bytes(), "text/csv")  # 418 passengers through the API
    flush(app)

    page = dashboard(client, "1h")

    assert page.text("total-predictions") == "418"
    assert "drift" not in bands(page).values(), bands(page)
    assert page.text("drifted-count") == f"0 of {len(FEATURES)}"


def test_shifted_traffic_is_flagged(client: FlaskClient, app: Flask) -> None:
    elderly_men = [{"Pclass": 3, "Sex": "male", "Age": 70, "Name": "Smith, Mr. John", "Embarked": "S"}] * 250
    post_passengers(client, elderly_men)
    flush(app)

    page = dashboard(client, "1h")

    found = bands(page)
    for feature in ("Age", "Pclass", "Sex", "Title"):
        assert found[feature] == "drift", (feature, drift_rows(page)[feature])
    age = drift_rows(page)["Age"]
    assert float(age[0]) > 0.25 and age[2] == "KS"
    assert float(age[4]) < 1e-6  # the KS test's p-value
    assert drift_rows(page)["Sex"][2] == "chi-squared"
    assert int(page.text("drifted-count").split(" of ")[0]) >= 4
    html = client.get("/dashboard?window=1h").text
    assert 'class="feature-Age band-drift"' in html
    assert '<span class="badge drift">drift</span>' in html


def test_below_the_minimum_window_drift_says_not_enough_data(
    client: FlaskClient, app: Flask, predictor: Predictor
) -> None:
    store(app, traffic(predictor, 199))
    assert drift_rows(dashboard(client))["Age"] == ["not enough data (199 of 200 predictions needed)"]

    store(app, traffic(predictor, 1, now=now_utc() - timedelta(hours=3)))

    measured = drift_rows(dashboard(client))["Age"]
    assert len(measured) == 5 and math.isfinite(float(measured[0]))


def test_drift_reads_at_most_the_newest_max_rows(make_app: MakeApp, predictor: Predictor) -> None:
    app = make_app(DRIFT_MAX_ROWS=300, DRIFT_MIN_ROWS=50)
    pool = passengers()
    normal = traffic(predictor, 300, pool=pool)  # the newest 300: the population of the training data
    elderly = [{"Pclass": 3, "Sex": "male", "Age": 70.0, "Name": "Smith, Mr. John", "Embarked": "S"}]
    shifted = traffic(predictor, 500, now=now_utc() - timedelta(hours=1), pool=elderly)  # older
    store(app, normal + shifted)

    html = app.test_client().get("/dashboard").text

    assert "The newest 300 predictions of the window (at most 300 are read)" in " ".join(html.split())
    assert bands(Page(html))["Age"] != "drift"  # the shifted rows are older than the newest 300


def test_missing_training_data_is_explained(make_app: MakeApp, tmp_path: Any) -> None:
    app = make_app(TRAIN_DATA=tmp_path / "nowhere.csv")

    page = dashboard(app.test_client())

    assert page.text("drift-error").startswith("Drift cannot be measured: training data not found:")
    assert "nowhere.csv" in page.text("drift-error")
