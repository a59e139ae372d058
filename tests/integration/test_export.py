"""The export (flask export and the history page's download), on SQLite and PostgreSQL: which
rows, which columns, the values as stored, Parquet, progress, and errors that store nothing."""

from __future__ import annotations

import csv
import io
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.integration.conftest import MakeApp
from tests.integration.seed import Stored, passengers, store, traffic
from titanic_web.export import COLUMNS
from titanic_web.features import FEATURES
from titanic_web.predictor import Predictor
from titanic_web.schema import FIELD_NAMES
from titanic_web.training import load_training_data

DAY = datetime(2026, 2, 1, 6, 0, tzinfo=UTC)
ADMIN_KEY = "export-admin-key-0123456789"


def invoke(app: Flask, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=["export", *args])


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture
def ten_days(app: Flask, predictor: Predictor) -> list[Stored]:
    """Ten predictions a day from 1 to 10 February 2026 (the oldest first)."""
    rows = traffic(predictor, 100, now=DAY + timedelta(days=10), spacing=timedelta(hours=2.4))
    rows.reverse()
    store(app, rows)
    return rows


def cell(value: Any) -> str:
    """A stored value as the CSV writes it."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def check_row(line: dict[str, str], row: Stored) -> None:
    """One CSV line against the row the test stored."""
    assert line["prediction_id"] == str(row.id)
    assert line["created_at"] == row.created_at.isoformat()
    for name in FIELD_NAMES:
        assert line[name] == cell(row.raw_input.get(name)), name
    assert line["Survived"] == cell(row.outcome)
    assert line["predicted_survived"] == str(row.survived)
    assert float(line["probability"]) == row.probability  # written in full precision
    assert line["latency_ms"] == cell(row.latency_ms)
    assert (line["model_version"], line["source"]) == (row.model_version, row.source)
    for name in FEATURES:
        assert line[f"feature_{name}"] == cell(row.features.get(name)), name


# -- flask --app titanic_web export --------------------------------------------------------------


def test_export_since_a_day_writes_those_rows_with_every_column(
    app: Flask, ten_days: list[Stored], tmp_path: Path
) -> None:
    out = tmp_path / "since.csv"

    result = invoke(app, "--since", "2026-02-08", "-o", str(out))

    assert result.exit_code == 0, result.output + repr(result.exception)
    lines = read_csv(out.read_text())
    expected = [r for r in ten_days if r.created_at >= datetime(2026, 2, 8, tzinfo=UTC)]
    assert 0 < len(expected) < len(ten_days)
    assert list(lines[0]) == list(COLUMNS)
    assert [line["prediction_id"] for line in lines] == [str(r.id) for r in expected]  # oldest first
    for line, row in zip(lines, expected, strict=True):
        check_row(line, row)
    assert f"wrote {out}: {len(expected)} rows" in result.stderr


@pytest.mark.parametrize(("since", "until"), [("2026-02-03", "2026-02-04"), ("20260203", "20260204")])
def test_until_includes_its_whole_day(
    app: Flask, ten_days: list[Stored], tmp_path: Path, since: str, until: str
) -> None:
    out = tmp_path / "span.csv"

    result = invoke(app, "--since", since, "--until", until, "-o", str(out))

    assert result.exit_code == 0, result.output
    got = [line["prediction_id"] for line in read_csv(out.read_text())]
    start, end = datetime(2026, 2, 3, tzinfo=UTC), datetime(2026, 2, 5, tzinfo=UTC)
    assert got == [str(r.id) for r in ten_days if start <= r.created_at < end]
    assert len(got) == 20


def test_times_are_taken_exactly(app: Flask, ten_days: list[Stored], tmp_path: Path) -> None:
    out = tmp_path / "times.csv"
    since, until = ten_days[10].created_at, ten_days[15].created_at

    result = invoke(app, "--since", since.isoformat(), "--until", until.isoformat(), "-o", str(out))

    assert result.exit_code == 0, result.output
    assert [line["prediction_id"] for line in read_csv(out.read_text())] == [str(r.id) for r in ten_days[10:15]]


def test_nothing_to_export_writes_the_header(app: Flask, tmp_path: Path) -> None:
    out = tmp_path / "empty.csv"

    result = invoke(app, "--since", "2026-01-01", "-o", str(out))

    assert result.exit_code == 0, result.output
    assert out.read_text() == ",".join(COLUMNS) + "\n"
    assert "0 rows" in result.stderr


def test_outcomes_only_is_a_training_file(app: Flask, ten_days: list[Stored], tmp_path: Path) -> None:
    out = tmp_path / "labelled.csv"

    result = invoke(app, "--since", "2026-01-01", "--outcomes-only", "-o", str(out))

    assert result.exit_code == 0, result.output
    lines = read_csv(out.read_text())
    labelled = [r for r in ten_days if r.outcome is not None]
    assert [line["prediction_id"] for line in lines] == [str(r.id) for r in labelled]
    raw, labels = load_training_data(out)  # what `flask train --data` reads
    assert list(labels) == [r.outcome for r in labelled]
    assert list(raw["Name"]) == [r.raw_input["Name"] for r in labelled]


def test_filters_by_source_and_model_version(app: Flask, ten_days: list[Stored], tmp_path: Path) -> None:
    out = tmp_path / "batch.csv"

    result = invoke(app, "--since", "2026-01-01", "--source", "batch", "--model-version", "v1", "-o", str(out))

    assert result.exit_code == 0, result.output
    got = [line["prediction_id"] for line in read_csv(out.read_text())]
    assert got == [str(r.id) for r in ten_days if r.source == "batch"]


def test_long_exports_report_progress(make_app: MakeApp, predictor: Predictor, tmp_path: Path) -> None:
    app = make_app(EXPORT_CHUNK_ROWS=100)
    store(app, traffic(predictor, 350))
    out = tmp_path / "progress.csv"

    result = invoke(app, "--since", "2000-01-01", "-o", str(out))

    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "exported 100 of 350 rows (29%)",
        "exported 200 of 350 rows (57%)",
        "exported 300 of 350 rows (86%)",
        "exported 350 of 350 rows (100%)",
        f"wrote {out}: 350 rows (from 2000-01-01T00:00:00+00:00)",
    ]
    assert result.stdout == ""
    assert len(read_csv(out.read_text())) == 350


def test_parquet_holds_the_same_rows(app: Flask, ten_days: list[Stored], tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    invoke(app, "--since", "2026-01-01", "-o", str(tmp_path / "all.csv"))
    result = invoke(app, "--since", "2026-01-01", "-o", str(tmp_path / "all.parquet"))

    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "all.parquet")
    assert table.column_names == list(COLUMNS)
    assert table.num_rows == len(ten_days)
    records = table.to_pylist()
    assert [r["prediction_id"] for r in records] == [str(r.id) for r in ten_days]
    assert [r["created_at"] for r in records] == [r.created_at for r in ten_days]
    assert [r["Survived"] for r in records] == [r.outcome for r in ten_days]
    assert [r["feature_Age"] for r in records] == [r.features["Age"] for r in ten_days]
    assert [r["Name"] for r in records] == [r["Name"] for r in read_csv((tmp_path / "all.csv").read_text())]
    assert str(table.schema.field("Age").type) == "double" and str(table.schema.field("Pclass").type) == "int64"


def test_parquet_without_pyarrow_says_so(
    app: Flask, ten_days: list[Stored], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` raise ImportError
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "all.parquet"

    result = invoke(app, "--since", "2026-01-01", "-o", str(out))

    assert result.exit_code == 1
    assert "writing Parquet needs pyarrow, which is not installed: `pip install pyarrow`" in result.output
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "last week", "-o", "x.csv"], "Invalid value for '--since': 'last week' is not a date"),
        (["-o", "x.csv"], "Missing option '--since'"),
        (
            ["--since", "2026-02-05", "--until", "2026-02-01", "-o", "x.csv"],
            "Invalid value for --until: must be after --since",
        ),
        (["--since", "2026-02-05", "-o", "x.json"], "the output file must end in .csv or .parquet, got 'x.json'"),
        (["--since", "2026-02-05", "--source", "fax", "-o", "x.csv"], "Invalid value for '--source'"),
    ],
)
def test_bad_arguments_are_named_and_write_nothing(
    app: Flask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    monkeypatch.chdir(folder)

    result = invoke(app, *args)

    assert result.exit_code != 0
    assert message in result.output
    assert list(folder.iterdir()) == []


def test_an_output_that_cannot_be_written_is_named_with_the_reason(app: Flask, tmp_path: Path) -> None:
    out = tmp_path / "no-such-folder" / "x.csv"

    result = invoke(app, "--since", "2026-01-01", "-o", str(out))

    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # a clear error, no traceback
    assert f"Error: cannot write {out}: the folder {out.parent} does not exist: create it" in result.output
    assert list(tmp_path.glob("**/*.csv*")) == []


# -- the history page's download ----------------------------------------------------------------


def download(client: FlaskClient, query: str = "") -> Any:
    response = client.get(f"/history/export.csv{query}", headers={"X-API-Key": ADMIN_KEY})
    body = response.get_data(as_text=True)
    response.close()  # a streamed answer ends its request (and its database session) when closed
    return response, body


@pytest.fixture
def admin_app(app: Flask) -> Flask:
    """The app with an admin key: the download is an admin action."""
    app.config["ADMIN_API_KEYS"] = (ADMIN_KEY,)
    return app


def test_download_honours_the_page_filters(admin_app: Flask, ten_days: list[Stored]) -> None:
    response, body = download(admin_app.test_client(), "?source=api&verdict=died&from=2026-02-05&to=2026-02-08")

    assert response.status_code == 200, body[:2000]
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"].startswith('attachment; filename="predictions-')
    lines = read_csv(body)
    start, end = datetime(2026, 2, 5, tzinfo=UTC), datetime(2026, 2, 9, tzinfo=UTC)
    expected = [r for r in ten_days if r.source == "api" and r.survived == 0 and start <= r.created_at < end]
    assert expected
    assert [line["prediction_id"] for line in lines] == [str(r.id) for r in expected]
    for line, row in zip(lines, expected, strict=True):
        check_row(line, row)


def test_download_of_everything_streams_in_chunks(make_app: MakeApp, predictor: Predictor) -> None:
    app = make_app(EXPORT_CHUNK_ROWS=64, ADMIN_API_KEYS=(ADMIN_KEY,))
    rows = traffic(predictor, 300, pool=passengers("train"))
    store(app, rows)

    response = app.test_client().get("/history/export.csv", headers={"X-API-Key": ADMIN_KEY})
    pieces = list(response.response)  # the body as the server sends it
    response.close()

    assert response.status_code == 200
    assert response.is_streamed
    assert len(pieces) >= 300 // 64  # a piece per chunk, not the whole file at once
    lines = read_csv(b"".join(p if isinstance(p, bytes) else p.encode() for p in pieces).decode())
    assert sorted(line["prediction_id"] for line in lines) == sorted(str(r.id) for r in rows)


def test_a_bad_filter_on_the_download_is_named(admin_app: Flask) -> None:
    response, body = download(admin_app.test_client(), "?verdict=perhaps")

    assert response.status_code == 400
    assert "verdict must be one of survived, died, got &#39;perhaps&#39;" in body
