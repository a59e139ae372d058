"""Big bodies through /api/predict: 100,000 rows answered in order and stored once, errors in late
chunks storing nothing, and memory that stays flat as the body grows."""

from __future__ import annotations

import csv
import io
import sys
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import TEST_CSV, count_rows, flush
from titanic_web import csvio, get_service, spool
from titanic_web.extensions import db
from titanic_web.models import FeatureRow, PredictionRow
from titanic_web.predictor import Predictor
from titanic_web.recorder import Staged

MakeApp = Callable[..., Flask]

HEADER, *TEST_LINES = TEST_CSV.read_text().splitlines()
COLUMNS = HEADER.split(",")
TEST_ROWS = list(csv.reader(TEST_LINES))


def big_csv(rows: int, *, change: dict[int, dict[str, str]] | None = None, distinct: bool = False) -> bytes:
    """test.csv's passengers repeated to `rows` rows, PassengerIds 1..rows, in order.

    ``change`` maps a CSV line (the header is line 1) to cells to replace on it;
    ``distinct`` gives every row its own Name and Ticket, as in a real passenger list.
    """
    change = change or {}
    pid, name, ticket = (COLUMNS.index(c) for c in ("PassengerId", "Name", "Ticket"))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for n in range(1, rows + 1):
        cells = list(TEST_ROWS[(n - 1) % len(TEST_ROWS)])
        cells[pid] = str(n)
        if distinct:
            cells[name] += f" {n}"
            cells[ticket] += f"-{n}"
        for column, value in change.get(n + 1, {}).items():
            cells[COLUMNS.index(column)] = value
        writer.writerow(cells)
    return out.getvalue().encode()


@pytest.fixture(scope="module")
def distinct_survived(predictor: Predictor) -> list[int]:
    """The model's verdict on each of test.csv's 418 passengers, in file order."""
    passengers = csvio.read_passengers(TEST_CSV.read_text(), max_rows=sys.maxsize)
    return [p.survived for p in predictor.predict(passengers)]


def post_csv(client: FlaskClient, body: Any, *, accept: str = "application/json") -> Any:
    return client.post("/api/predict", data=body, content_type="text/csv", headers={"Accept": accept})


def stored_by_source(app: Flask) -> tuple[int, int]:
    """(predictions with source 'api', feature_store rows joined to them)."""
    with app.app_context():
        predictions = db.session.scalar(
            db.select(db.func.count()).select_from(PredictionRow).where(PredictionRow.source == "api")
        )
        features = db.session.scalar(
            db.select(db.func.count())
            .select_from(FeatureRow)
            .join(PredictionRow, PredictionRow.id == FeatureRow.prediction_id)
            .where(PredictionRow.source == "api")
        )
    return int(predictions or 0), int(features or 0)


def spooled_rows(app: Flask) -> int:
    return int(spool.scan(Path(app.config["SPOOL_DIR"]))["rows"])


def assert_422(response: Any) -> dict[str, Any]:
    assert response.status_code == 422, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["code"] == 422
    return body


# -- big and valid ------------------------------------------------------------------------------


def test_100k_row_csv_answers_a_submission_in_order_and_stores_every_row(
    make_app: MakeApp, distinct_survived: list[int]
) -> None:
    # SQLite only: on PostgreSQL delivering 100,000 rows takes ~15 s on a busy 2-core machine;
    # PostgreSQL gets the 5,000-row array and the error cases below.
    app = make_app()
    client = app.test_client()
    rows = 100_000
    response = post_csv(client, big_csv(rows), accept="text/csv")

    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert response.mimetype == "text/csv"
    lines = response.get_data(as_text=True).splitlines()
    assert lines[0] == "PassengerId,Survived"
    assert lines[1:] == [f"{n},{distinct_survived[(n - 1) % 418]}" for n in range(1, rows + 1)]

    flush(app, timeout=120)
    assert count_rows(app) == (rows, rows)
    assert stored_by_source(app) == (rows, rows)
    assert spooled_rows(app) == 0


def test_5000_passenger_json_array_is_answered_in_order_and_each_id_stored_once(
    make_app: MakeApp, database_url: str, predictor: Predictor
) -> None:
    app = make_app(database_url=database_url, BATCH_CHUNK_ROWS=1000)
    client = app.test_client()
    base = csvio.read_passengers(TEST_CSV.read_text(), max_rows=sys.maxsize)
    passengers = [{**base[(n - 1) % len(base)], "PassengerId": n} for n in range(1, 5001)]

    response = client.post("/api/predict", json=passengers)

    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    body = response.get_json()
    assert body["model_version"] == predictor.version
    answers = body["predictions"]
    want = predictor.predict(passengers)
    assert [a["PassengerId"] for a in answers] == list(range(1, 5001))
    assert [(a["survived"], a["probability"]) for a in answers] == [(p.survived, round(p.probability, 4)) for p in want]
    ids = [uuid.UUID(a["id"]) for a in answers]
    assert len(set(ids)) == 5000

    flush(app, timeout=60)
    with app.app_context():
        stored = {
            r.id: (r.passenger_id, r.survived, r.probability, r.source)
            for r in db.session.scalars(db.select(PredictionRow))
        }
        featured = {r.prediction_id: (r.features, r.raw_input) for r in db.session.scalars(db.select(FeatureRow))}
    assert len(stored) == 5000 and len(featured) == 5000
    assert stored == {
        i: (a["PassengerId"], a["survived"], p.probability, "api") for i, a, p in zip(ids, answers, want, strict=True)
    }
    # Spooled by column (the features as numbers, their JSON written by the writer): what
    # one passenger's request would store, exactly.
    assert featured == {i: (p.features, passenger) for i, p, passenger in zip(ids, want, passengers, strict=True)}


def test_a_request_staged_in_a_file_is_published_whole_with_its_latency(
    make_app: MakeApp, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past Staged.IN_MEMORY_BYTES a request's lines go to a staged file, published by renaming it:
    every row arrives once, with the one latency of its request, and no file is left."""
    monkeypatch.setattr(Staged, "IN_MEMORY_BYTES", 20_000)  # a few chunks of this body
    app = make_app(database_url=database_url, BATCH_CHUNK_ROWS=100)
    response = post_csv(app.test_client(), big_csv(2000), accept="text/csv")
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    directory = Path(app.config["SPOOL_DIR"])
    assert [p for p in directory.glob(f"*{spool.SUFFIX}") if spool.pending_value(p.name) is not None]
    assert spooled_rows(app) == 2000

    flush(app, timeout=60)
    with app.app_context():
        stored = db.session.execute(db.select(PredictionRow.passenger_id, PredictionRow.latency_ms)).all()
    assert sorted(pid for pid, _ in stored) == list(range(1, 2001))
    latencies = {latency for _, latency in stored}
    assert len(latencies) == 1 and next(iter(latencies)) > 0, latencies
    assert count_rows(app) == (2000, 2000)
    assert spooled_rows(app) == 0
    left = [p.name for p in directory.iterdir()]
    assert not [n for n in left if n.endswith(spool.STAGED_SUFFIX)], left
    assert not [n for n in left if spool.pending_value(n) is not None], left


def test_a_staged_file_is_deleted_when_a_late_row_is_invalid(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Staged, "IN_MEMORY_BYTES", 20_000)
    app = make_app(BATCH_CHUNK_ROWS=100)
    response = post_csv(app.test_client(), big_csv(2000, change={1900: {"Age": "-3"}}))
    body = assert_422(response)
    assert [(e["line"], e["field"]) for e in body["errors"]] == [(1900, "Age")]
    assert spooled_rows(app) == 0
    assert list(Path(app.config["SPOOL_DIR"]).glob(f".*{spool.STAGED_SUFFIX}")) == []


# -- invalid rows -------------------------------------------------------------------------------


def test_bad_cell_past_the_first_chunk_names_its_line_and_stores_nothing(client: FlaskClient, app: Flask) -> None:
    # Line 4568 holds passenger index 4566, in the third chunk of 2000.
    body = big_csv(6000, change={4568: {"Pclass": "4"}})

    response = assert_422(post_csv(client, body))

    assert response["error_count"] == 1
    assert [(e["line"], e["index"], e["field"]) for e in response["errors"]] == [(4568, 4566, "Pclass")]
    assert "1, 2, 3" in response["errors"][0]["message"]
    assert count_rows(app) == (0, 0)
    assert spooled_rows(app) == 0


def test_many_bad_rows_list_the_first_thousand_errors_and_count_them_all(client: FlaskClient, app: Flask) -> None:
    # 1200 rows with a bad Age, 300 of them with a bad Sex too: 1500 errors in all.
    change = {line: {"Age": "old"} for line in range(3001, 4201)}
    for line in range(3001, 3301):
        change[line]["Sex"] = "unknown"
    body = big_csv(5000, change=change)

    response = assert_422(post_csv(client, body, accept="text/csv"))

    assert response["error_count"] == 1500
    assert len(response["errors"]) == 1000
    assert "1500" in response["message"] and "1000" in response["message"]
    listed = [(e["line"], e["field"]) for e in response["errors"]]
    # Each row's errors in field order; the list stops after 300 two-error rows and 400 more.
    assert listed == [(line, field) for line in range(3001, 3301) for field in ("Sex", "Age")] + [
        (line, "Age") for line in range(3301, 3701)
    ]
    assert count_rows(app) == (0, 0)
    assert spooled_rows(app) == 0


# -- memory -------------------------------------------------------------------------------------


def test_memory_stays_flat_as_the_body_grows(make_app: MakeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app()
    # No writer thread: tracemalloc sees every thread, and only the request is measured.
    monkeypatch.setattr(get_service(app).recorder, "start", lambda: None)
    client = app.test_client()
    assert post_csv(client, big_csv(3000, distinct=True), accept="text/csv").status_code == 200  # warm-up

    def peak(rows: int) -> int:
        body = big_csv(rows, distinct=True)  # built before tracing starts: not counted
        tracemalloc.start()
        try:
            response = post_csv(client, body, accept="text/csv")
            assert response.status_code == 200
            assert response.get_data().count(b"\n") == rows + 1
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(10_000), peak(50_000)

    assert large < 1.6 * small, f"peak {large / 1e6:.1f} MB for 50k rows, {small / 1e6:.1f} MB for 10k"
