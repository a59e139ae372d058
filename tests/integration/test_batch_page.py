"""The batch page end to end through the test client, with CSRF on as in production.

A CSV upload posted without JavaScript (the page answers when the file is done)
and as static/batch.js sends it (a stream of JSON lines), every error it can
end in, the download of the submission, and its expiry.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import TEST_CSV, count_rows, csrf_token, flush
from tests.integration.conftest import MakeApp
from tests.integration.helpers import csv_with_cell, kaggle_rows
from titanic_web.extensions import db
from titanic_web.models import PredictionRow
from titanic_web.predictor import Predictor
from titanic_web.spool import SUFFIX, whole_lines

EVENTS = "application/x-ndjson"
EXPIRED_TEXT = "Your form had expired"
DOWNLOAD = re.compile(r'<a class="button" id="batch-download" href="(/batch/([0-9a-f]{32})/submission\.csv)"')
TEST_ROWS = 418


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture
def batch_dir(app: Flask, tmp_path: Path) -> Path:
    """The app's batch results go to the test's folder, never the checkout's instance/."""
    folder = tmp_path / "batches"
    app.config["BATCH_DIR"] = folder  # read on each request
    return folder


@pytest.fixture
def batch_client(app: Flask, batch_dir: Path) -> FlaskClient:
    return app.test_client()


def variant(make_app: MakeApp, tmp_path: Path, **overrides: Any) -> Flask:
    """A make_app variant whose batch results stay in the test's folder."""
    return make_app(BATCH_DIR=tmp_path / "variant-batches", **overrides)


def post_file(
    client: FlaskClient,
    data: bytes | None,
    *,
    filename: str = "test.csv",
    token: str | None = "fetch",
    events: bool = False,
) -> Any:
    """POST the batch form as a browser does (multipart); token "fetch" gets one from GET /batch first."""
    form: dict[str, Any] = {}
    if token == "fetch":
        token = csrf_token(client.get("/batch").get_data(as_text=True))
    if token is not None:
        form["csrf_token"] = token
    if data is not None:
        form["file"] = (io.BytesIO(data), filename)
    headers = {"Accept": EVENTS} if events else {}
    return client.post("/batch", data=form, content_type="multipart/form-data", headers=headers)


def read_events(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200
    assert response.mimetype == EVENTS
    text = response.get_data(as_text=True)
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def figure(html: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', html)
    assert match, f"no #{element_id} on the page"
    return match.group(1).strip()


def download_link(html: str) -> str:
    match = DOWNLOAD.search(html)
    assert match, "no download link on the page"
    return match.group(1)


class ErrorTable(HTMLParser):
    """The rows (cells as text) of the table #batch-error-list."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.found = False
        self.rows: list[list[str]] = []
        self._in_table = self._in_body = False
        self._cell: list[str] | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and dict(attrs).get("id") == "batch-error-list":
            self.found = self._in_table = True
        elif self._in_table and tag == "tbody":
            self._in_body = True
        elif self._in_body and tag == "tr":
            self.rows.append([])
        elif self._in_body and tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._in_table = self._in_body = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def status_of(client: FlaskClient, url: str) -> int:
    """GET url; the response is closed (a file it sends is not left open)."""
    with client.get(url) as response:
        return response.status_code


def error_rows(html: str) -> list[list[str]]:
    table = ErrorTable(html)
    assert table.found, "no #batch-error-list on the page"
    return table.rows


def spooled_bytes(app: Flask) -> int:
    """Bytes in the app's spool segments (before the writer delivers them)."""
    folder = Path(app.config["SPOOL_DIR"])
    return sum(len(whole_lines(p.read_bytes())) for p in folder.glob(f"*{SUFFIX}")) if folder.is_dir() else 0


def kept_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def sources(app: Flask) -> dict[str, int]:
    flush(app)
    with app.app_context():
        rows = db.session.execute(db.select(PredictionRow.source, db.func.count()).group_by(PredictionRow.source)).all()
    return {source: int(n) for source, n in rows}


def assert_nothing_stored(app: Flask, folder: Path) -> None:
    """Nothing spooled (checked before the writer could deliver it), in the tables, or kept to download."""
    assert spooled_bytes(app) == 0
    assert count_rows(app) == (0, 0)
    assert kept_files(folder) == []


def flask_predict(app: Flask) -> list[str]:
    """`flask --app titanic_web predict test.csv`: the offline submission, as lines."""
    result = app.test_cli_runner().invoke(args=["predict", str(TEST_CSV)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    lines: list[str] = result.stdout.splitlines()
    assert len(lines) == 1 + TEST_ROWS
    return lines


def assert_download(client: FlaskClient, href: str, expected: list[str]) -> list[list[str]]:
    """The link answers submission.csv as a text/csv attachment equal to `expected` line by line."""
    with client.get(href) as response:
        assert response.status_code == 200
        assert response.mimetype == "text/csv"
        disposition = response.headers["Content-Disposition"]
        assert disposition.startswith("attachment") and "filename=submission.csv" in disposition
        body = response.get_data(as_text=True)
    assert body.splitlines() == expected
    return list(csv.reader(io.StringIO(body)))


# -- the page ------------------------------------------------------------------------------------


def test_batch_page_has_a_protected_multipart_form(batch_client: FlaskClient) -> None:
    response = batch_client.get("/batch")

    assert response.status_code == 200
    html = response.get_data(as_text=True)
    form = re.search(r'<form method="post" action="/batch" enctype="multipart/form-data"[^>]*id="batch-form"', html)
    assert form, "no multipart form posting to /batch"
    assert re.search(r'<input [^>]*name="file"[^>]*type="file"', html)
    assert len(csrf_token(html)) > 20
    assert re.search(r'<section id="batch-progress"[^>]*hidden', html), "the progress panel shows before JS"
    assert 'id="batch-summary"' not in html
    with batch_client.get("/static/batch.js") as script:
        assert script.status_code == 200
        assert "application/x-ndjson" in script.get_data(as_text=True)


# -- a valid file --------------------------------------------------------------------------------


def test_posted_file_is_summarised_stored_and_downloadable(
    batch_client: FlaskClient, app: Flask, batch_dir: Path, predictor: Predictor
) -> None:
    response = post_file(batch_client, TEST_CSV.read_bytes())

    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert f"{TEST_ROWS} passengers predicted" in html
    assert figure(html, "batch-errors") == "0"
    survived = int(figure(html, "batch-survived"))
    assert figure(html, "batch-rate") == f"{survived / TEST_ROWS * 100:.1f}%"

    # The download equals the offline submission, line by line, and agrees with the summary.
    expected = flask_predict(app)
    rows = assert_download(batch_client, download_link(html), expected)
    assert survived == sum(int(r[1]) for r in rows[1:])
    assert [int(r[1]) for r in rows[1:]] == [p.survived for p in predictor.predict(kaggle_rows(TEST_CSV))]
    assert len(kept_files(batch_dir)) == 1

    # Every row is stored once, with source "batch".
    assert count_rows(app) == (TEST_ROWS, TEST_ROWS)
    assert sources(app) == {"batch": TEST_ROWS}


def test_events_stream_progress_then_the_outcome(batch_client: FlaskClient, app: Flask) -> None:
    app.config["BATCH_CHUNK_ROWS"] = 100
    data = TEST_CSV.read_bytes()

    events = read_events(post_file(batch_client, data, events=True))

    assert events[0] == {"event": "started", "bytes": len(data)}
    progress = events[1:-1]
    assert {e["event"] for e in progress} == {"progress"}
    rows = [e["rows"] for e in progress]
    assert len(rows) >= TEST_ROWS // 100, "one event per BATCH_CHUNK_ROWS rows"
    # Each count against the one before it (0 before the first): the shifted list is one longer.
    assert all(0 < b - a <= 100 for a, b in zip([0, *rows], rows, strict=False)), rows
    assert rows[-1] <= TEST_ROWS
    assert all(e["errors"] == 0 for e in progress)
    fractions = [e["fraction"] for e in progress]
    assert all(isinstance(f, float | int) and 0 <= f <= 1 for f in fractions), fractions
    assert fractions == sorted(fractions) and fractions[-1] == 1, fractions  # the whole file read
    done = events[-1]
    assert done["event"] == "done" and done["status"] == 200
    assert f"{TEST_ROWS} passengers predicted" in done["html"]
    assert "<html" not in done["html"]  # the outcome alone, for the page to insert
    assert_download(batch_client, download_link(done["html"]), flask_predict(app))
    assert sources(app) == {"batch": TEST_ROWS}


# -- row errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "column", "value", "fragment"),
    [(7, "Pclass", "4", "1, 2, 3"), (300, "Age", "old", "number"), (TEST_ROWS + 1, "Sex", "", "required")],
    ids=["Pclass", "Age", "last-line-Sex"],
)
def test_bad_cell_is_422_naming_its_line_and_nothing_is_stored(
    batch_client: FlaskClient, app: Flask, batch_dir: Path, line: int, column: str, value: str, fragment: str
) -> None:
    response = post_file(batch_client, csv_with_cell(line, column, value).encode())

    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert "1 error in the file: nothing was predicted or stored" in html
    [row] = error_rows(html)
    assert row[:2] == [str(line), column]
    assert fragment in row[2]
    assert 'id="batch-download"' not in html
    assert_nothing_stored(app, batch_dir)


def test_events_end_with_the_error_table(batch_client: FlaskClient, app: Flask, batch_dir: Path) -> None:
    app.config["BATCH_CHUNK_ROWS"] = 100
    lines = csv_with_cell(7, "Pclass", "4").splitlines()
    lines[249] = csv_with_cell(250, "Fare", "-3").splitlines()[249]  # two bad cells, lines 7 and 250

    events = read_events(post_file(batch_client, ("\n".join(lines) + "\n").encode(), events=True))

    progress = [e for e in events if e["event"] == "progress"]
    counts = {e["rows"]: e["errors"] for e in progress}
    assert counts[100] == counts[200] == 1 and counts[300] == 2, counts  # errors counted as they are found
    done = events[-1]
    assert done["event"] == "done" and done["status"] == 422
    assert [r[:2] for r in error_rows(done["html"])] == [["7", "Pclass"], ["250", "Fare"]]
    assert_nothing_stored(app, batch_dir)


# -- unusable files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ("PassengerId,Pclass,Sex\n1,3,m\xe4le\n".encode("latin-1"), "UTF-8"),
        (b"\xff\xfe" + "PassengerId,Pclass,Sex\n".encode("utf-16-le"), "UTF-8"),
        (b"", "empty"),
        (b"PassengerId,Pclass,Name,Sex,Age,SibSp,Parch,Ticket,Fare,Cabin,Embarked\n", "no passengers"),
    ],
    ids=["latin-1", "utf-16", "empty", "header-only"],
)
def test_unusable_file_is_400_with_a_message(
    batch_client: FlaskClient, app: Flask, batch_dir: Path, data: bytes, fragment: str
) -> None:
    response = post_file(batch_client, data)

    assert response.status_code == 400
    html = response.get_data(as_text=True)
    notice = figure(html, "batch-summary")
    assert notice.startswith("The file cannot be used:") and fragment in notice, notice
    assert 'id="batch-form"' in html  # the page, to try another file
    assert_nothing_stored(app, batch_dir)


def test_more_rows_than_max_rows_is_413(make_app: MakeApp, tmp_path: Path) -> None:
    app = variant(make_app, tmp_path, MAX_ROWS=10)
    client = app.test_client()

    response = post_file(client, TEST_CSV.read_bytes())

    assert response.status_code == 413
    notice = figure(response.get_data(as_text=True), "batch-summary")
    assert "more than 10 passengers" in notice and "MAX_ROWS" in notice
    assert_nothing_stored(app, tmp_path / "variant-batches")
    # Ten rows are within the limit.
    ten = "".join(TEST_CSV.read_text().splitlines(keepends=True)[:11]).encode()
    assert post_file(client, ten).status_code == 200
    assert sources(app) == {"batch": 10}


@pytest.mark.parametrize(
    ("data", "filename", "fragment"),
    [(None, "", "Choose a CSV file"), (b"MZ\x90\x00", "titanic.exe", "must be a CSV file")],
    ids=["no-file", "exe"],
)
def test_missing_or_wrong_kind_of_file_is_422(
    batch_client: FlaskClient, app: Flask, batch_dir: Path, data: bytes | None, filename: str, fragment: str
) -> None:
    response = post_file(batch_client, data, filename=filename)

    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert re.search(r'<div class="notice warn" role="alert" id="file-error">[^<]*' + fragment, html), html[-3000:]
    # the input is described by its hint and the error (what a screen reader reads with it)
    assert re.search(
        r'<input [^>]*aria-describedby="file-hint file-error"[^>]*aria-invalid="true"[^>]*name="file"', html
    )
    assert 'id="batch-summary"' not in html
    assert_nothing_stored(app, batch_dir)


def test_no_model_is_503_saying_to_train(make_app: MakeApp, tmp_path: Path, no_model_dir: Path) -> None:
    app = variant(make_app, tmp_path, MODEL_DIR=no_model_dir)

    response = post_file(app.test_client(), TEST_CSV.read_bytes())

    assert response.status_code == 503
    assert "train" in figure(response.get_data(as_text=True), "batch-summary")
    assert_nothing_stored(app, tmp_path / "variant-batches")


# -- CSRF ----------------------------------------------------------------------------------------


def assert_expired_batch_page(response: Any, old_token: str | None) -> str:
    """The batch page again (400), explaining, with a fresh token; returns the token."""
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert EXPIRED_TEXT in html
    assert 'id="batch-form"' in html and 'name="file"' in html
    assert 'id="batch-summary"' not in html
    token = csrf_token(html)
    assert token != old_token
    return token


def test_missing_token_rerenders_the_batch_page(batch_client: FlaskClient, app: Flask, batch_dir: Path) -> None:
    response = post_file(batch_client, TEST_CSV.read_bytes(), token=None)

    fresh = assert_expired_batch_page(response, None)
    assert_nothing_stored(app, batch_dir)
    assert post_file(batch_client, TEST_CSV.read_bytes(), token=fresh).status_code == 200


def test_expired_token_rerenders_the_batch_page(make_app: MakeApp, tmp_path: Path) -> None:
    app = variant(make_app, tmp_path, WTF_CSRF_TIME_LIMIT=1)
    client = app.test_client()
    old = csrf_token(client.get("/batch").get_data(as_text=True))
    time.sleep(2.2)  # itsdangerous counts whole seconds: age 2 > limit 1

    response = post_file(client, TEST_CSV.read_bytes(), token=old, events=True)  # as batch.js sends it

    fresh = assert_expired_batch_page(response, old)
    assert_nothing_stored(app, tmp_path / "variant-batches")
    assert post_file(client, TEST_CSV.read_bytes(), token=fresh).status_code == 200


# -- downloads -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "0123456789abcdef0123456789abcdef",
        "0123456789ABCDEF0123456789ABCDEF",
        "abc",
        "0123456789abcdef0123456789abcdef0",
        "..%2F..%2Fsecret_key",
        "%2E%2E",
    ],
    ids=["unknown", "upper-case", "short", "long", "traversal", "dots"],
)
def test_download_of_unknown_or_malformed_token_is_404(batch_client: FlaskClient, batch_dir: Path, token: str) -> None:
    post_file(batch_client, TEST_CSV.read_bytes())  # a kept file exists: the others are still not found

    with batch_client.get(f"/batch/{token}/submission.csv") as response:
        assert response.status_code == 404
        assert response.mimetype == "text/html"
        assert "PassengerId,Survived" not in response.get_data(as_text=True)


def one_expired_one_recent(batch_client: FlaskClient, app: Flask, batch_dir: Path) -> tuple[str, str, Path]:
    """Two batches kept, the first written a minute past BATCH_KEEP_HOURS ago, the second a minute
    short of it: (the expired one's link, the recent one's link, the expired one's file)."""
    old = download_link(post_file(batch_client, TEST_CSV.read_bytes()).get_data(as_text=True))
    recent = download_link(post_file(batch_client, TEST_CSV.read_bytes()).get_data(as_text=True))
    keep = app.config["BATCH_KEEP_HOURS"] * 3600
    [old_file] = [p for p in batch_dir.iterdir() if p.stem in old]
    [recent_file] = [p for p in batch_dir.iterdir() if p.stem in recent]
    now = time.time()
    os.utime(old_file, (now - keep - 60, now - keep - 60))
    os.utime(recent_file, (now - keep + 60, now - keep + 60))
    return old, recent, old_file


def test_expired_results_are_removed_when_a_new_batch_is_kept(
    batch_client: FlaskClient, app: Flask, batch_dir: Path
) -> None:
    old, recent, old_file = one_expired_one_recent(batch_client, app, batch_dir)
    stale_partial = batch_dir / ".0123456789abcdef0123456789abcdef.tmp"
    stale_partial.write_text("PassengerId,Survived\n")
    expired = old_file.stat().st_mtime
    os.utime(stale_partial, (expired, expired))

    new = download_link(post_file(batch_client, TEST_CSV.read_bytes()).get_data(as_text=True))

    assert not old_file.exists() and not stale_partial.exists()
    assert status_of(batch_client, old) == 404
    assert status_of(batch_client, recent) == 200
    assert status_of(batch_client, new) == 200
    assert len(kept_files(batch_dir)) == 2


def test_expired_result_is_404_and_removed_when_downloaded(
    batch_client: FlaskClient, app: Flask, batch_dir: Path
) -> None:
    old, recent, old_file = one_expired_one_recent(batch_client, app, batch_dir)

    with batch_client.get(old) as response:  # no batch uploaded since it expired
        assert response.status_code == 404
        text = response.get_data(as_text=True)
        assert "PassengerId,Survived" not in text
        assert f"results are kept for {app.config['BATCH_KEEP_HOURS']:g} hours" in text
    assert not old_file.exists()
    assert status_of(batch_client, recent) == 200
    assert len(kept_files(batch_dir)) == 1  # the recent one's
