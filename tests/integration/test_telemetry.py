"""GET /metrics, the X-Request-ID header and the request log through the test client; the request id
and latency stored with each prediction on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.exc import OperationalError

from tests.conftest import FORM_VALUES, PASSENGER, TEST_CSV, csrf_token, flush
from tests.integration.conftest import MakeApp
from titanic_web import get_service, requestlog, spool
from titanic_web import recorder as recorder_module
from titanic_web.extensions import db
from titanic_web.metrics import MULTIPROC_ENV, PROBABILITY_BUCKETS, Metrics, use_directory
from titanic_web.models import PredictionRow

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

#: PASSENGER as a browser submits the form: text for every field.
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def csv_rows(count: int) -> str:
    """The header and the first `count` passengers of the competition's test.csv."""
    return "\n".join(TEST_CSV.read_text().splitlines()[: count + 1]) + "\n"


def scrape(client: FlaskClient) -> Samples:
    """GET /metrics, parsed: every sample by name and labels."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert response.content_type == "text/plain; version=0.0.4; charset=utf-8"
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for s in family.samples
    }


def requests_of(samples: Samples, endpoint: str, status: int) -> float:
    return samples.get(("titanic_http_requests_total", (("endpoint", endpoint), ("status", str(status)))), 0.0)


def stored(app: Flask) -> list[PredictionRow]:
    """Every stored prediction, once the recorder has delivered what it spooled."""
    flush(app)
    with app.app_context():
        rows = list(db.session.scalars(db.select(PredictionRow)))
        db.session.expunge_all()
        db.session.remove()
    return rows


@pytest.fixture
def log_lines() -> Iterator[list[dict[str, Any]]]:
    """The request log's lines, parsed, as the app writes them."""
    lines: list[dict[str, Any]] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(json.loads(record.getMessage()))  # type: ignore[method-assign]
    requestlog.log.addHandler(handler)
    yield lines
    requestlog.log.removeHandler(handler)


def post_form(client: FlaskClient, values: dict[str, str]) -> Any:
    token = csrf_token(client.get("/").get_data(as_text=True))
    return client.post("/", data={**values, "csrf_token": token})


# -- /metrics ---------------------------------------------------------------------------------


def test_metrics_count_what_was_answered_refused_and_stored(make_app: MakeApp, log_lines: list[dict[str, Any]]) -> None:
    app = make_app()
    client = app.test_client()
    version = get_service(app).require_predictor().version
    passengers = [PASSENGER, {**PASSENGER, "Sex": "female", "Pclass": 1}, {**PASSENGER, "Age": 4, "Parch": 2}]
    sent = [
        client.post("/api/predict", json=PASSENGER),  # 1 answer
        client.post("/api/predict", json=passengers),  # 3
        client.post("/api/predict", data=csv_rows(2), content_type="text/csv"),  # 2
        client.post("/api/predict", json={**PASSENGER, "Age": -1, "Agee": 3}),  # 422: Age, an unknown field
        client.post("/api/predict", data=csv_rows(2).replace("\n893,3,", "\n893,7,"), content_type="text/csv"),  # 422
        post_form(client, FORM_VALUES),  # GET / and a valid POST: 1 answer
        post_form(client, {**FORM_VALUES, "Pclass": "", "Age": "-5"}),  # GET / and a 422
        client.get("/api/health"),
        client.get("/no/such/page"),
    ]
    assert [r.status_code for r in sent] == [200, 200, 200, 422, 422, 200, 422, 200, 404]
    rows = stored(app)  # flushes: the writer's counters are final
    assert len(rows) == 7

    samples = scrape(client)

    assert requests_of(samples, "api.predict", 200) == 3
    assert requests_of(samples, "api.predict", 422) == 2
    assert requests_of(samples, "web.index", 200) == 3  # two GETs and the valid POST
    assert requests_of(samples, "web.index", 422) == 1
    assert requests_of(samples, "api.health", 200) == 1
    assert requests_of(samples, "none", 404) == 1
    latency_count = samples[("titanic_http_request_duration_seconds_count", (("endpoint", "api.predict"),))]
    assert latency_count == 5
    assert samples[("titanic_http_request_duration_seconds_sum", (("endpoint", "api.predict"),))] > 0

    # Predictions by class and their probabilities: the same as the stored rows.
    survived = sum(r.survived for r in rows)
    assert samples[("titanic_predictions_total", (("survived", "1"),))] == survived
    assert samples[("titanic_predictions_total", (("survived", "0"),))] == 7 - survived
    assert samples[("titanic_prediction_probability_count", ())] == 7
    assert samples[("titanic_prediction_probability_sum", ())] == pytest.approx(sum(r.probability for r in rows))
    for bound in PROBABILITY_BUCKETS:
        below = sum(1 for r in rows if r.probability <= bound)
        assert samples[("titanic_prediction_probability_bucket", (("le", str(bound)),))] == below, bound

    # The fields of the refused requests, by source.
    failures = {
        labels: value for (name, labels), value in samples.items() if name == "titanic_validation_failures_total"
    }
    assert failures == {
        (("field", "Age"), ("source", "api")): 1,
        (("field", "unknown"), ("source", "api")): 1,
        (("field", "Pclass"), ("source", "api")): 1,
        (("field", "Age"), ("source", "form")): 1,
        (("field", "Pclass"), ("source", "form")): 1,
    }

    # The recorder: everything spooled was written, nothing waits.
    assert samples[("titanic_recorder_rows_spooled_total", ())] == 7
    assert samples[("titanic_recorder_rows_written_total", ())] == 7
    assert samples[("titanic_recorder_backlog_rows", ())] == 0
    assert samples[("titanic_recorder_write_failures_total", ())] == 0
    assert samples[("titanic_recorder_rows_quarantined_total", ())] == 0
    assert samples[("titanic_model_info", (("version", version),))] == 1

    # One log line per request, each with the id its response carried.
    assert len(log_lines) == len(sent) + 2 + 1  # the two form GETs, and /metrics itself
    by_id = {line["request_id"]: line for line in log_lines}
    for response in sent:
        line = by_id[response.headers["X-Request-ID"]]
        assert line["status"] == response.status_code
        assert line["latency_ms"] > 0 and line["model_version"] == version
    api_lines = [line for line in log_lines if line["endpoint"] == "api.predict"]
    assert [(line["method"], line["route"], line["rows"]) for line in api_lines] == [
        ("POST", "/api/predict", n) for n in (1, 3, 2, 0, 0)
    ]
    assert [line["rows"] for line in log_lines if line["endpoint"] == "web.index"] == [0, 1, 0, 0]
    assert by_id[sent[-1].headers["X-Request-ID"]]["route"] is None  # a 404 matched no route


def test_validation_failures_count_every_error_not_only_those_listed(make_app: MakeApp, tmp_path: Path) -> None:
    app = make_app(BATCH_DIR=tmp_path / "batches")
    client = app.test_client()
    response = client.post("/api/predict", json=[{**PASSENGER, "Pclass": 9}] * 1500 + [{**PASSENGER, "Age": -1}])
    assert response.status_code == 422
    assert (len(response.get_json()["errors"]), response.get_json()["error_count"]) == (1000, 1501)
    lines = csv_rows(3).splitlines()
    text = "\n".join([lines[0], *[lines[1].replace(",male,", ",unknown,")] * 1200]) + "\n"
    token = csrf_token(client.get("/batch").get_data(as_text=True))
    client.post(
        "/batch",
        data={"csrf_token": token, "file": (io.BytesIO(text.encode()), "test.csv")},
        content_type="multipart/form-data",
    )
    client.post("/api/predict", data=text.replace("Sex", "Sex,Sex", 1), content_type="text/csv")  # the header
    client.post("/api/predict", data=text.replace("Sex", "Sexx", 1), content_type="text/csv")

    failures = {
        labels: value for (name, labels), value in scrape(client).items() if name == "titanic_validation_failures_total"
    }
    assert failures == {
        (("field", "Pclass"), ("source", "api")): 1500,
        (("field", "Age"), ("source", "api")): 1,
        (("field", "Sex"), ("source", "batch")): 1200,
        (("field", "Sex"), ("source", "api")): 2,  # repeated; then missing, beside the unknown Sexx
        (("field", "unknown"), ("source", "api")): 1,
    }


def test_a_batch_upload_is_logged_once_its_stream_ends(
    make_app: MakeApp, tmp_path: Path, log_lines: list[dict[str, Any]]
) -> None:
    """The batch page predicts while its progress streams: its line and counts come when the stream ends."""
    app = make_app(BATCH_DIR=tmp_path / "batches")
    client = app.test_client()
    token = csrf_token(client.get("/batch").get_data(as_text=True))
    response = client.post(
        "/batch",
        data={"csrf_token": token, "file": (io.BytesIO(csv_rows(5).encode()), "test.csv")},
        content_type="multipart/form-data",
        headers={"Accept": "application/x-ndjson", "X-Request-ID": "upload-1"},
    )
    events = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["status"] == 200
    assert response.headers["X-Request-ID"] == "upload-1"

    line = log_lines[-1]
    assert (line["request_id"], line["endpoint"], line["status"]) == ("upload-1", "web.batch_page", 200)
    assert line["rows"] == 5  # predicted while the progress streamed
    samples = scrape(client)
    assert samples[("titanic_prediction_probability_count", ())] == 5
    assert {r.request_id for r in stored(app)} == {"upload-1"}


def test_monitoring_that_fails_never_fails_the_answer(make_app: MakeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_app().test_client()
    errors: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = errors.append  # type: ignore[method-assign]
    logging.getLogger("titanic_web.telemetry").addHandler(handler)

    def broken(*args: object) -> None:
        raise RuntimeError("metrics are broken")

    monkeypatch.setattr(Metrics, "observe_request", broken)
    try:
        response = client.post("/api/predict", json=PASSENGER, headers={"X-Request-ID": "r-1"})
    finally:
        logging.getLogger("titanic_web.telemetry").removeHandler(handler)
    assert response.status_code == 200 and len(response.get_json()["predictions"]) == 1
    assert [(r.levelno, r.getMessage()) for r in errors] == [(logging.ERROR, "monitoring failed for request r-1")]
    assert errors[0].exc_info is not None and "metrics are broken" in str(errors[0].exc_info[1])


def test_recorder_metrics_follow_the_backlog_a_failing_database_and_a_damaged_line(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    recorder = get_service(app).recorder
    monkeypatch.setattr(recorder, "start", lambda: None)  # no writer thread: the test delivers
    client = app.test_client()
    for _ in range(3):
        assert client.post("/api/predict", json=PASSENGER).status_code == 200
    samples = scrape(client)
    assert samples[("titanic_recorder_rows_spooled_total", ())] == 3
    assert samples[("titanic_recorder_backlog_rows", ())] == 3
    assert samples[("titanic_recorder_rows_written_total", ())] == 0

    real = recorder_module.write_batch
    calls: list[int] = []

    def fails_once(*args: Any, **kwargs: Any) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return real(*args, **kwargs)

    monkeypatch.setattr(recorder_module, "write_batch", fails_once)
    with recorder.stage() as staged:  # a line the database could never take: set aside, not retried
        staged.add([["not-a-uuid", "", "0", "0.5", "v", "api", "x", "{}", "{}"]])
        staged.commit()
    assert recorder.flush(timeout=10)

    samples = scrape(client)
    assert samples[("titanic_recorder_write_failures_total", ())] == 1
    assert samples[("titanic_recorder_rows_written_total", ())] == 3
    assert samples[("titanic_recorder_rows_quarantined_total", ())] == 1
    assert samples[("titanic_recorder_rows_spooled_total", ())] == 4
    assert samples[("titanic_recorder_backlog_rows", ())] == 0


def test_an_app_made_with_a_metrics_folder_keeps_its_values_there(
    make_app: MakeApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What gunicorn.conf.py arranges: the setting read when the app is made, values in per-process files."""
    folder = tmp_path / "prometheus"
    monkeypatch.setenv(MULTIPROC_ENV, str(folder))
    try:
        app = make_app()
        client = app.test_client()
        assert client.post("/api/predict", json=[PASSENGER, PASSENGER]).status_code == 200
        samples = scrape(client)
    finally:
        use_directory(None)  # the rest of the run keeps its values in memory
    assert app.extensions["metrics"].multiprocess
    assert (folder / f"counter_{os.getpid()}.db").exists()
    assert samples[("titanic_prediction_probability_count", ())] == 2
    assert requests_of(samples, "api.predict", 200) == 1


# -- X-Request-ID -------------------------------------------------------------------------------


REQUESTS = {
    "predict": ("POST", "/api/predict", {"json": PASSENGER}, 200),
    "invalid": ("POST", "/api/predict", {"json": {"Sex": "male"}}, 422),
    "wrong-type": ("POST", "/api/predict", {"data": "x", "content_type": "text/plain"}, 415),
    "wrong-method": ("GET", "/api/predict", {}, 405),
    "form-without-token": ("POST", "/", {"data": FORM_VALUES}, 400),
    "page": ("GET", "/", {}, 200),
    "missing-page": ("GET", "/nowhere", {}, 404),
    "metrics": ("GET", "/metrics", {}, 200),
    "health": ("GET", "/api/health", {}, 200),
}


@pytest.mark.parametrize(("method", "path", "options", "status"), REQUESTS.values(), ids=REQUESTS.keys())
def test_every_response_carries_the_request_id(
    make_app: MakeApp, method: str, path: str, options: dict[str, Any], status: int
) -> None:
    client = make_app().test_client()

    given = client.open(path, method=method, headers={"X-Request-ID": "client-req-42"}, **options)
    assert given.status_code == status, given.get_data(as_text=True)[:500]
    assert given.headers["X-Request-ID"] == "client-req-42"

    made = [client.open(path, method=method, **options) for _ in range(2)]
    ids = [r.headers["X-Request-ID"] for r in made]
    assert all(HEX32.match(i) and uuid.UUID(hex=i).version == 4 for i in ids), ids
    assert ids[0] != ids[1]

    replaced = client.open(path, method=method, headers={"X-Request-ID": "no spaces <allowed>"}, **options)
    assert HEX32.match(replaced.headers["X-Request-ID"])


# -- the request id and latency in the predictions table (SQLite and PostgreSQL) ----------------------


def test_request_id_and_latency_are_stored_with_each_prediction(app: Flask, client: FlaskClient) -> None:
    app.config["BATCH_CHUNK_ROWS"] = 2  # five passengers in three chunks: still one latency

    started = time.perf_counter()
    array = client.post("/api/predict", json=[PASSENGER] * 3, headers={"X-Request-ID": "array-req"})
    array_ms = (time.perf_counter() - started) * 1000
    chunked = client.post(
        "/api/predict", data=csv_rows(5), content_type="text/csv", headers={"X-Request-ID": "csv-req"}
    )
    form = post_form(client, FORM_VALUES)
    assert [r.status_code for r in (array, chunked, form)] == [200, 200, 200]
    form_id = form.headers["X-Request-ID"]
    assert HEX32.match(form_id)

    rows = stored(app)
    by_request: dict[str | None, list[PredictionRow]] = {}
    for row in rows:
        by_request.setdefault(row.request_id, []).append(row)
    assert {k: len(v) for k, v in by_request.items()} == {"array-req": 3, "csv-req": 5, form_id: 1}
    assert {str(r.id) for r in by_request["array-req"]} == {p["id"] for p in array.get_json()["predictions"]}
    assert sorted(r.source for r in by_request[form_id]) == ["form"]
    for request_id, group in by_request.items():
        latencies = {r.latency_ms for r in group}
        assert len(latencies) == 1, (request_id, latencies)  # one value for every row of a request
        latency = latencies.pop()
        assert latency is not None and latency > 0, request_id
    assert by_request["array-req"][0].latency_ms <= array_ms  # measured inside the request


def test_spool_lines_of_the_previous_format_are_still_delivered(app: Flask) -> None:
    """A line spooled before request ids existed (nine fields a row) is written with NULLs for both."""
    recorder = get_service(app).recorder
    old_ids = [uuid.uuid4().hex for _ in range(2)]
    now_row = [
        "",
        "892",
        "0",
        "0.25",
        "v-old",
        "api",
        "2026-11-27 12:30:00.000000+00:00",
        '{"Pclass":3.0}',
        '{"Pclass":3,"Sex":"male"}',
    ]
    with recorder.stage() as staged:
        staged.add([[old_ids[0], *now_row[1:]], [old_ids[1], *now_row[1:]]])
        staged.commit()
    lines = [
        line
        for path in recorder.spool.directory.glob(f"*{spool.SUFFIX}")
        for line in spool.whole_lines(path.read_bytes()).splitlines()
    ]
    assert [len(fields) for line in lines for fields in spool.decode(line)[1]] == [9, 9]

    rows = stored(app)

    assert sorted(r.id.hex for r in rows) == sorted(old_ids)
    assert {(r.model_version, r.request_id, r.latency_ms) for r in rows} == {("v-old", None, None)}
    assert recorder.status()["lines_quarantined"] == 0
