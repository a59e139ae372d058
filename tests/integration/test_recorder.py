"""The write-behind recorder end to end: every answered prediction reaches both tables exactly
once, through a database that is locked or down, a restart, a replay; a disk that refuses fails
the request loudly. Faults run on SQLite and on PostgreSQL (cut through a TCP proxy)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, make_url, select
from sqlalchemy.exc import DataError, OperationalError

from tests.conftest import (
    FORM_VALUES,
    PASSENGER,
    POSTGRES_URL,
    build_app,
    close_app,
    count_rows,
    csrf_token,
    postgres_schema,
)
from tests.fakes import FullDisk
from tests.tcp_proxy import TcpProxy
from titanic_web import SQLITE_CACHE_KIB, SQLITE_CHECKPOINT_PAGES, get_service, spool
from titanic_web import recorder as recorder_module
from titanic_web.extensions import db
from titanic_web.models import FeatureRow, PredictionRow
from titanic_web.recorder import Record, Recorder, parse_fields, typed, write_apart, write_batch

FAST = {"RECORDER_RETRY_MAX_SECONDS": 0.2, "RECORDER_FLUSH_SECONDS": 0.05, "DATABASE_CONNECT_TIMEOUT": 2}

#: PASSENGER as the form posts it.


# -- a database the test can take down ----------------------------------------


class SqliteFault:
    """A SQLite file whose folder is moved away (down) and back (up)."""

    name = "sqlite"

    def __init__(self, tmp_path: Path) -> None:
        self.home = tmp_path / "sqlite"
        self.home.mkdir()
        self.away = tmp_path / "sqlite-away"
        self.url = f"sqlite:///{self.home / 'test.db'}"
        self.is_down = False

    def down(self, *apps: Flask) -> None:
        self.home.rename(self.away)
        self.is_down = True
        for app in apps:  # open connections would keep the moved file: drop them
            with app.app_context():
                db.engine.dispose()

    def up(self) -> None:
        self.away.rename(self.home)
        self.is_down = False


class PostgresFault:
    """A fresh PostgreSQL schema reached through a proxy that refuses (down) or forwards (up)."""

    name = "postgresql"

    def __init__(self, schema_url: str, proxy: TcpProxy) -> None:
        self.proxy = proxy
        self.url = make_url(schema_url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)

    @property
    def is_down(self) -> bool:
        return not self.proxy.is_up

    def down(self, *apps: Flask) -> None:
        self.proxy.down()

    def up(self) -> None:
        self.proxy.up()


Fault = SqliteFault | PostgresFault


@pytest.fixture(params=["sqlite", "postgresql"])
def fault(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fault]:
    if request.param == "sqlite":
        sqlite_fault = SqliteFault(tmp_path)
        yield sqlite_fault
        if sqlite_fault.is_down:
            sqlite_fault.up()
        return
    server = make_url(POSTGRES_URL)
    with (
        postgres_schema(request.getfixturevalue("postgres")) as url,
        TcpProxy(server.host or "127.0.0.1", server.port or 5432) as proxy,
    ):
        yield PostgresFault(url, proxy)


MakeApp = Callable[..., Flask]


@pytest.fixture
def apps(model_dir: Path, tmp_path: Path, fault: Fault) -> Iterator[MakeApp]:
    """Apps on the fault's database (each with its own spool unless SPOOL_DIR is given)."""
    built: list[Flask] = []

    def build(*, tables: bool = True, **overrides: Any) -> Flask:
        config = {**FAST, **overrides}
        app = build_app(model_dir, tmp_path / f"app{len(built)}.db", tables=tables, database_url=fault.url, **config)
        built.append(app)
        return app

    yield build
    if fault.is_down:
        fault.up()
    for app in built:
        close_app(app)


# -- helpers ----------------------------------------------------------------------


def recorder_of(app: Flask) -> Recorder:
    return get_service(app).recorder


def predict(client: FlaskClient, count: int = 1) -> list[str]:
    """POST count passengers to the API; it must answer 200; return the answered ids."""
    body = [dict(PASSENGER, PassengerId=1000 + i) for i in range(count)]
    response = client.post("/api/predict", json=body if count > 1 else body[0])
    assert response.status_code == 200, response.get_data(as_text=True)
    ids = [p["id"] for p in response.get_json()["predictions"]]
    assert len(ids) == count
    return ids


def burst(client: FlaskClient, requests: int = 12) -> list[str]:
    """Several requests of one to three passengers; every one must answer 200."""
    ids: list[str] = []
    for i in range(requests):
        ids += predict(client, 1 + i % 3)
    return ids


def ready(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/api/ready")
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def wait_for(check: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def stored(app: Flask) -> tuple[Counter[uuid.UUID], Counter[uuid.UUID]]:
    """Every id in predictions and in feature_store, with how often each occurs."""
    with app.app_context():
        predictions = Counter(db.session.scalars(select(PredictionRow.id)))
        features = Counter(db.session.scalars(select(FeatureRow.prediction_id)))
        db.session.remove()
    return predictions, features


def assert_stored_once(app: Flask, ids: list[str]) -> None:
    """Each answered id is in both tables exactly once, and nothing else is there."""
    assert len(set(ids)) == len(ids), "the app answered the same uuid twice"
    expected = Counter(uuid.UUID(i) for i in ids)
    predictions, features = stored(app)
    missing = set(expected) - set(predictions)
    assert not missing, f"{len(missing)} of {len(ids)} answered predictions are not in `predictions`"
    assert predictions == expected, "`predictions` holds duplicates or rows nobody was answered"
    assert features == expected, "`feature_store` does not hold each answered prediction exactly once"


def spooled_ids(directory: Path) -> list[str]:
    """Every record id in the spool files, delivered or not."""
    ids: list[str] = []
    for path in sorted(directory.glob(f"*{spool.SUFFIX}")):
        for line in spool.whole_lines(path.read_bytes()).splitlines(keepends=True):
            ids += [str(uuid.UUID(fields[0])) for fields in spool.decode(line)[1]]
    return ids


def make_record(source: str = "api", passenger_id: int | None = 892, **fields: Any) -> list[str]:
    """A record's spooled fields."""
    values: dict[str, Any] = dict(
        id=uuid.uuid4(),
        passenger_id=passenger_id,
        survived=1,
        probability=0.75,
        model_version="test",
        source=source,
        features={"Pclass": 3, "Age": 34.5, "Deck": None},
        raw_input=dict(PASSENGER),
    )
    values.update(fields)
    return Record(**values).to_fields()


# -- idempotent writes ----------------------------------------------------------


@pytest.mark.parametrize("portable", [False, True], ids=["driver", "core"])
def test_write_batch_twice_stores_each_row_once(app: Flask, portable: bool) -> None:
    records = [parse_fields(make_record(passenger_id=892 + i)) for i in range(3)]
    ids = [r[0] for r in records]
    with app.app_context():
        assert write_batch(db.session, records, portable=portable) == 3
        assert write_batch(db.session, records, portable=portable) == 0
        fresh = parse_fields(make_record())
        assert write_batch(db.session, [records[0], fresh, fresh], portable=portable) == 1  # old, new, new again
        db.session.remove()
    assert_stored_once(app, ids + [fresh[0]])
    with app.app_context():
        row = db.session.get(PredictionRow, uuid.UUID(ids[1]))
        assert row is not None and row.passenger_id == 893 and row.source == "api"
        features = db.session.get(FeatureRow, uuid.UUID(ids[1]))
        assert features is not None and features.raw_input == PASSENGER
        db.session.remove()


def test_a_batch_over_several_statements_stores_each_row_once(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's driver path sends ROWS_PER_STATEMENT rows to a statement (PostgreSQL's one
    statement of arrays per table): a batch of several statements, and one resent with new
    rows among the old, counts and stores each row once."""
    monkeypatch.setattr(recorder_module, "ROWS_PER_STATEMENT", 7)
    records = [parse_fields(make_record(passenger_id=i)) for i in range(30)]  # 5 statements: 7 x 4 + 2
    more = [parse_fields(make_record(passenger_id=100 + i)) for i in range(5)]
    with app.app_context():
        assert write_batch(db.session, records) == 30
        assert write_batch(db.session, records[10:] + more + records[:3]) == 5
        db.session.remove()
    assert_stored_once(app, [r[0] for r in records + more])
    with app.app_context():
        stored = dict(db.session.execute(db.select(PredictionRow.id, PredictionRow.passenger_id)).all())
        db.session.remove()
    assert {i.hex: pid for i, pid in stored.items()} == {r[0]: int(r[1]) for r in records + more}


@pytest.mark.parametrize("portable", [False, True], ids=["driver", "core"])
def test_a_written_record_reads_back_through_the_models_unchanged(app: Flask, portable: bool) -> None:
    """The driver path writes the tables' own storage formats (uuid, time, JSON): the
    models read back exactly what was recorded, as the Core path writes it."""
    at = datetime(2026, 11, 27, 12, 30, 0, 0, tzinfo=UTC)  # no microseconds: still 6 digits stored
    features = {"Pclass": 1.0, "Age": None, "Title": "Mrs", "FarePerPerson": 35.5 / 3}
    raw = {"PassengerId": None, "Pclass": 1, "Sex": "female", "Name": 'Ünïcode, Mrs. "Q"\tTab', "Age": None}
    record = Record(
        id=uuid.uuid4(),
        passenger_id=None,
        survived=1,
        probability=1 / 3,
        model_version="abc123def456",
        source="batch",
        features=features,
        raw_input=raw,
        created_at=at,
    )
    with app.app_context():
        assert write_batch(db.session, [parse_fields(record.to_fields())], portable=portable) == 1
        db.session.remove()
        row = db.session.get(PredictionRow, record.id)
        stored_features = db.session.get(FeatureRow, record.id)
        assert row is not None and stored_features is not None
        assert (row.passenger_id, row.survived, row.probability, row.model_version, row.source) == (
            None,
            1,
            1 / 3,
            "abc123def456",
            "batch",
        )
        assert row.created_at.replace(tzinfo=UTC) == at
        assert stored_features.created_at.replace(tzinfo=UTC) == at
        assert stored_features.features == features and stored_features.raw_input == raw
        assert stored_features.model_version == "abc123def456"
        # the time orders and filters as a time, whichever path wrote it
        later = db.session.scalars(
            db.select(PredictionRow.id).where(PredictionRow.created_at > at - timedelta(seconds=1))
        )
        assert list(later) == [record.id]
        db.session.remove()


def test_the_driver_path_stores_what_sqlalchemy_would(app: Flask) -> None:
    """Byte for byte the same stored values (uuid, time, numbers) as the Core path, so
    the rows sort, compare and join alike whichever path wrote them."""
    at = datetime(2026, 11, 27, 12, 30, 0, 5, tzinfo=UTC)
    by_driver, by_core = (parse_fields(make_record(created_at=at, passenger_id=None)) for _ in range(2))
    with app.app_context():
        write_batch(db.session, [by_driver])
        write_batch(db.session, [by_core], portable=True)
        connection = db.session.connection()
        stored = {
            table: {
                row[0] == by_driver[0] or str(row[0]).replace("-", "") == by_driver[0]: row
                for row in connection.exec_driver_sql(f"SELECT {key}, {columns} FROM {table}")
            }
            for table, key, columns in [
                ("predictions", "id", "passenger_id, survived, probability, model_version, source, created_at"),
                ("feature_store", "prediction_id", "model_version, created_at"),
            ]
        }
        db.session.remove()
    for table, rows in stored.items():
        driver, core = rows[True], rows[False]
        assert type(driver[0]) is type(core[0]) and len(str(driver[0])) == len(str(core[0])), table
        assert tuple(driver[1:]) == tuple(core[1:]), table


def _stored_rows(app: Flask) -> dict[str, tuple[Any, ...]]:
    """Every stored prediction by its id in hex: its values, then its feature-store row's."""
    with app.app_context():
        rows = db.session.execute(
            db.select(
                PredictionRow.id,
                PredictionRow.passenger_id,
                PredictionRow.survived,
                PredictionRow.probability,
                PredictionRow.model_version,
                PredictionRow.request_id,
                PredictionRow.latency_ms,
                FeatureRow.features,
                FeatureRow.raw_input,
                FeatureRow.model_version,
            ).join(FeatureRow, FeatureRow.prediction_id == PredictionRow.id)
        ).all()
        db.session.remove()
    return {row[0].hex: tuple(row[1:]) for row in rows}


def test_null_and_set_values_mixed_in_one_batch_are_stored_as_given(app: Flask) -> None:
    """PostgreSQL gets each column as one text, split by the server, '' read as NULL where a
    column may be NULL: rows with and without a PassengerId, request id or latency, side by
    side in one batch, and alone in a batch of one (whose column of one '' splits into no
    value at all), come back as they were given."""
    given = [
        dict(passenger_id=None, request_id=None, latency_ms=None, probability=1 / 3),
        dict(passenger_id=5, request_id="req-1", latency_ms=1.5, probability=0.1 + 0.2),
        dict(passenger_id=None, request_id="req-2", latency_ms=None, probability=2**-40),
        dict(passenger_id=0, request_id=None, latency_ms=0.0, probability=0.0),
    ]
    batch = [parse_fields(make_record(**values)) for values in given]
    alone = [parse_fields(make_record(**values)) for values in given]
    with app.app_context():
        assert write_batch(db.session, batch) == len(batch)
        for row in alone:
            assert write_batch(db.session, [row]) == 1
        db.session.remove()
    stored_rows = _stored_rows(app)
    for rows in (batch, alone):
        for row, values in zip(rows, given, strict=True):
            assert stored_rows[row[0]][:6] == (
                values["passenger_id"],
                1,
                values["probability"],
                "test",
                values["request_id"],
                values["latency_ms"],
            )
            assert stored_rows[row[0]][6:] == (json.loads(row[7]), PASSENGER, "test")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgres_inserts_a_new_batch_plainly_and_skips_stored_rows_only_when_resent(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain INSERT costs PostgreSQL less than ON CONFLICT DO NOTHING: a new batch goes
    without it; one holding rows stored before fails on the key, is rolled back (nothing of
    it half stored) and goes again skipping them."""
    sent: list[str] = []

    def seen(_connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("INSERT"):
            sent.append(statement)

    records = [parse_fields(make_record(passenger_id=i)) for i in range(3)]
    fresh = parse_fields(make_record(passenger_id=7))
    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", seen)
        try:
            assert write_batch(db.session, records) == 3
            assert ["ON CONFLICT" in statement for statement in sent] == [False, False]
            sent.clear()
            with caplog.at_level("INFO", logger="titanic_web.recorder"):
                assert write_batch(db.session, [*records[1:], fresh]) == 1
            assert ["ON CONFLICT" in statement for statement in sent] == [False, True, True]
        finally:
            event.remove(db.engine, "before_cursor_execute", seen)
            db.session.remove()
    assert "held rows stored before" in caplog.text
    assert_stored_once(app, [r[0] for r in records] + [fresh[0]])
    assert _stored_rows(app)[fresh[0]][0] == 7


def test_rows_delivered_from_memory_are_the_lines_on_disk(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer delivers its own requests' rows from what it kept of them in memory: what it
    stores is exactly what the lines on disk hold (what another process would deliver after a
    crash), the request's id and latency filled in alike."""
    recorder = recorder_of(app)
    monkeypatch.setattr(recorder, "start", lambda: None)  # delivered by hand below
    client = app.test_client()
    one = client.post("/api/predict", json=PASSENGER, headers={"X-Request-ID": "one-passenger"})
    three = client.post("/api/predict", json=[dict(PASSENGER, PassengerId=900 + i) for i in range(3)])
    assert one.status_code == three.status_code == 200
    ids = [uuid.UUID(a["id"]).hex for answer in (one, three) for a in answer.get_json()["predictions"]]
    on_disk = [
        parse_fields(fields)
        for path in sorted(Path(app.config["SPOOL_DIR"]).glob(f"*{spool.SUFFIX}"))
        for line in spool.whole_lines(path.read_bytes()).splitlines(keepends=True)
        for fields in spool.decode(line)[1]
    ]
    assert [row[0] for row in on_disk] == ids and all(row[10] for row in on_disk)  # latencies filled in
    kept = recorder.spool.next_kept(max_rows=100)
    assert kept is not None and [parse_fields(fields) for fields in kept[1]] == on_disk  # all four, as on disk
    assert recorder.deliver_once() == 4
    assert recorder.backlog()[0] == 0 and recorder.spool.kept_rows == 0
    stored_rows = _stored_rows(app)
    for row in on_disk:
        _, pid, survived, probability, version, _, _, features, raw, rid, latency = typed(row)
        assert stored_rows[row[0]] == (
            pid,
            survived,
            probability,
            version,
            rid,
            latency,
            json.loads(features),
            json.loads(raw),
            version,
        )
    assert stored_rows[ids[0]][4] == "one-passenger"


def test_a_kept_row_that_fails_its_check_is_read_back_and_its_line_set_aside(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept rows are checked as if read back. If one fails, the batch is read back from disk
    instead, where the damaged line is set aside and the others are delivered."""
    recorder = recorder_of(app)
    monkeypatch.setattr(recorder, "start", lambda: None)
    good = [make_record(passenger_id=i) for i in range(2)]
    bad = make_record(passenger_id=5)
    bad[2] = "yes"
    for fields in (good[0], bad, good[1]):
        with recorder.stage() as staged:
            staged.add([fields])
            staged.commit()
    assert recorder.spool.next_kept(max_rows=100) is not None
    assert recorder.deliver_once() == 3
    assert recorder.lines_quarantined == 1 and recorder.backlog()[0] == 0
    assert_stored_once(app, [str(uuid.UUID(fields[0])) for fields in good])
    (bad_file,) = Path(app.config["SPOOL_DIR"]).glob("*.bad")
    assert spool.decode(bad_file.read_bytes())[1] == [bad]


def test_a_row_the_database_refuses_is_set_aside_and_the_rest_delivered(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Text with braces that is no JSON passes parse_fields, and PostgreSQL's json type refuses
    it: the batch goes again in halves, the refused row is set aside in a .bad file, and the
    answers around it are stored (SQLite keeps the text as it is)."""
    recorder = recorder_of(app)
    monkeypatch.setattr(recorder, "start", lambda: None)
    good = [make_record(passenger_id=i) for i in range(5)]
    bad = make_record(passenger_id=99)
    bad[7] = '{"Age":}'
    assert parse_fields(bad)[7] == '{"Age":}'
    for fields in (*good[:2], bad, *good[2:]):
        with recorder.stage() as staged:
            staged.add([fields])
            staged.commit()
    assert recorder.deliver_once() == 6
    assert recorder.backlog()[0] == 0 and recorder.status()["database"] == "ok"
    postgres = make_url(app.config["SQLALCHEMY_DATABASE_URI"]).get_backend_name() == "postgresql"
    kept = good if postgres else [*good, bad]
    assert_stored_once(app, [str(uuid.UUID(fields[0])) for fields in kept])
    assert recorder.rows_written == len(kept)
    bad_files = list(Path(app.config["SPOOL_DIR"]).glob("*.bad"))
    if postgres:
        (bad_file,) = bad_files
        assert spool.decode(bad_file.read_bytes())[1] == [bad]
        assert recorder.lines_quarantined == 1
    else:
        assert bad_files == [] and recorder.lines_quarantined == 0


def test_a_refused_row_alone_at_the_end_of_a_segment_does_not_hold_back_the_next(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A segment that is full (or was left by a stopped process) ends in a row the database
    refuses: its batch is that row alone, which is set aside, and the next segment follows."""
    recorder = recorder_of(app)
    monkeypatch.setattr(recorder, "start", lambda: None)
    bad = make_record(passenger_id=99)
    bad[7] = '{"Age":}'
    good = [make_record(passenger_id=i) for i in range(3)]
    with recorder.stage() as staged:
        staged.add([bad])
        staged.commit()
    active = recorder.spool.active
    assert active is not None
    active.sealed, recorder.spool.active = True, None  # as when it reaches its size
    for fields in good:
        with recorder.stage() as staged:
            staged.add([fields])
            staged.commit()
    assert recorder.flush(10), recorder.status()
    postgres = make_url(app.config["SQLALCHEMY_DATABASE_URI"]).get_backend_name() == "postgresql"
    assert_stored_once(app, [str(uuid.UUID(fields[0])) for fields in (good if postgres else [bad, *good])])
    assert recorder.lines_quarantined == (1 if postgres else 0)


def test_rows_committed_before_a_failure_are_counted_once(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """A halved batch commits part by part: when the database fails after some parts, the rows
    they stored count as written, and are not counted again when the batch is sent again."""
    recorder = recorder_of(app)
    monkeypatch.setattr(recorder, "start", lambda: None)
    rows = [make_record(passenger_id=i) for i in range(3)]
    bad = make_record(passenger_id=99)
    bad[7] = '{"Age":}'
    for fields in (*rows, bad):
        with recorder.stage() as staged:
            staged.add([fields])
            staged.commit()
    real, calls = recorder_module.write_batch, []

    def failing_third(session: Any, batch: Any, **options: Any) -> int:
        calls.append(len(batch))
        if len(calls) == 3:
            raise OperationalError("INSERT ...", {}, Exception("connection lost"))
        return real(session, batch, **options)

    postgres = make_url(app.config["SQLALCHEMY_DATABASE_URI"]).get_backend_name() == "postgresql"
    monkeypatch.setattr(recorder_module, "write_batch", failing_third)
    if postgres:  # the whole (refused), its first half (stored), its second half (fails)
        with pytest.raises(OperationalError):
            recorder.deliver_once()
        assert calls == [4, 2, 2] and recorder.rows_written == 2
        monkeypatch.setattr(recorder_module, "write_batch", real)
    assert recorder.flush(10), recorder.status()
    assert_stored_once(app, [str(uuid.UUID(fields[0])) for fields in (rows if postgres else [*rows, bad])])
    assert recorder.rows_written == (3 if postgres else 4)


class _Refusing:
    """A session whose database refuses the rows marked refused (a DataError), whatever else
    they are with; it counts the transactions it was asked for."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.rollbacks = 0

    def write(self, session: Any, rows: Any, **options: Any) -> int:
        ids = [row[0] for row in rows]
        self.batches.append(ids)
        if any(row[1] == "refused" for row in rows):
            raise DataError("INSERT ...", {}, Exception("invalid input syntax for type json"))
        return len(rows)

    def rollback(self) -> None:
        self.rollbacks += 1


def test_write_apart_halves_a_refused_batch_down_to_the_rows_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    database = _Refusing()
    monkeypatch.setattr(recorder_module, "write_batch", database.write)
    rows = [(f"id{i}", "refused" if i in (2, 5) else "") for i in range(8)]
    written: list[int] = []
    refused = write_apart(database, rows, written=written.append)  # type: ignore[arg-type]
    assert sum(written) == 6
    assert [row[0] for row, _ in refused] == ["id2", "id5"]
    assert all(isinstance(why, DataError) for _, why in refused)
    failed = [batch for batch in database.batches if {"id2", "id5"} & set(batch)]
    stored_ids = sorted(i for batch in database.batches if batch not in failed for i in batch)
    assert stored_ids == sorted(f"id{i}" for i in (0, 1, 3, 4, 6, 7))  # each good row once
    assert database.rollbacks == len(failed) == 7  # 8 rows, 4 + 4, 2 + 2 ..., down to the two refused
    assert len(database.batches) == 11  # halving: a few transactions, not one a row
    clean = _Refusing()
    monkeypatch.setattr(recorder_module, "write_batch", clean.write)
    written.clear()
    assert write_apart(clean, rows[:2], written=written.append) == []  # type: ignore[arg-type]
    assert clean.batches == [["id0", "id1"]] and written == [2]


def test_write_apart_retries_a_batch_whose_every_row_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several rows, every one refused, is the database's doing (a schema that does not match),
    not the rows': the error goes up, the writer retries, and nothing is set aside. One row
    refused alone cannot be told from a bad row, and is set aside."""
    database = _Refusing()
    monkeypatch.setattr(recorder_module, "write_batch", database.write)
    with pytest.raises(DataError):
        write_apart(database, [("a", "refused"), ("b", "refused")])  # type: ignore[arg-type]
    ((row, why),) = write_apart(database, [("a", "refused")])  # type: ignore[arg-type]
    assert row == ("a", "refused") and isinstance(why, DataError)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda f: f[:-1], "9 fields"),
        (lambda f: ["not-a-uuid"] + f[1:], "bad prediction id"),
        (lambda f: ["0123456789abcdef 123456789abcde"] + f[1:], "bad prediction id"),  # 32 characters, 15 bytes
        (lambda f: ["0123456789abcdef_123456789abcdef"] + f[1:], "non-hexadecimal"),
        (lambda f: f[:1] + ["1_000"] + f[2:], "bad passenger id"),  # Python reads it, the databases do not
        (lambda f: f[:1] + ["\uff18\uff19\uff12"] + f[2:], "bad passenger id"),  # full-width 892
        (lambda f: f[:1] + [str(2**31)] + f[2:], "bad passenger id"),  # past PostgreSQL's integer
        (lambda f: f[:1] + ["ninety"] + f[2:], "invalid literal"),
        (lambda f: f[:2] + ["yes"] + f[3:], "bad survived"),
        (lambda f: f[:2] + ["2"] + f[3:], "bad survived"),
        (lambda f: f[:3] + ["high"] + f[4:], "bad probability"),
        (lambda f: f[:3] + ["1.5"] + f[4:], "bad probability"),
        (lambda f: f[:3] + ["nan"] + f[4:], "bad probability"),
        (lambda f: f[:3] + ["0.2_5"] + f[4:], "bad probability"),
        (lambda f: f[:3] + [" 0.25"] + f[4:], "bad probability"),
        (lambda f: f[:-1] + ["-1.0"], "bad latency"),
        (lambda f: f[:-1] + ["1_0.5"], "bad latency"),
        (lambda f: f[:-1] + ["inf"], "bad latency"),
        (lambda f: f[:3] + ["1e-400"] + f[4:], "bad probability"),  # Python reads 0.0, PostgreSQL refuses it
        (lambda f: f[:3] + ["-1e-400"] + f[4:], "bad probability"),
        (lambda f: f[:-1] + ["1e-400"], "bad latency"),
        (lambda f: f[:6] + ["2026-11-27X12:30:00.000000+00:00"] + f[7:], "bad time"),  # Python reads it
        (lambda f: f[:6] + ["2026-W48-5 12:30:00.000000+00:00"] + f[7:], "bad time"),  # a week date
        (lambda f: f[:4] + ["v" * 65] + f[5:], "model version"),  # past the column's 64
        (lambda f: f[:4] + ["v\x001"] + f[5:], "model version"),
        (lambda f: f[:4] + ["v\x1e1"] + f[5:], "model version"),  # PostgreSQL's column separator
        (lambda f: f[:7] + ['{"Age":3,"Deck":"\x1e"}'] + f[8:], "JSON objects"),  # a raw control character
        (lambda f: f[:8] + ['{"Name":"\x1e"}'] + f[9:], "JSON objects"),
        (lambda f: f[:5] + ["robot"] + f[6:], "bad source"),
        (lambda f: f[:6] + ["2026-11-27 12:30:00.000000"] + f[7:], "bad time"),
        (lambda f: f[:6] + ["yesterday"] + f[7:], "Invalid isoformat"),
        (lambda f: f[:7] + ['{"Age": 3'] + f[8:], "JSON objects"),
    ],
)
def test_a_damaged_spooled_record_is_refused_before_the_database_sees_it(
    change: Callable[[list[str]], list[str]], problem: str
) -> None:
    fields = make_record()
    assert parse_fields(fields)[0] == fields[0]
    with pytest.raises(ValueError, match=problem):
        parse_fields(change(fields))


# -- the request never waits for the database ------------------------------------


def test_request_does_not_touch_the_database(apps: MakeApp, fault: Fault, monkeypatch: pytest.MonkeyPatch) -> None:
    app = apps()
    recorder = recorder_of(app)
    monkeypatch.setattr(recorder, "start", lambda: None)  # no writer: only the request runs
    fault.down(app)
    with app.app_context():
        engine = db.engine
    attempts: list[object] = []

    def count_attempt(*args: Any) -> None:
        attempts.append(args)

    event.listen(engine, "do_connect", count_attempt)
    try:
        client = app.test_client()
        ids = burst(client, 6)
    finally:
        event.remove(engine, "do_connect", count_attempt)
    assert attempts == [], "a request tried to connect to the database"
    assert recorder.status()["writer_running"] is False

    spool_dir = Path(app.config["SPOOL_DIR"])
    assert sorted(spooled_ids(spool_dir)) == sorted(ids)
    assert recorder.backlog()[0] == len(ids)
    assert spool.scan(spool_dir)["rows"] == len(ids)

    fault.up()
    assert recorder.flush(10), recorder.status()
    assert_stored_once(app, ids)


# -- locked and down ---------------------------------------------------------------


def test_every_sqlite_connection_gets_the_settings(make_app: Any) -> None:
    """WAL, the busy timeout, NORMAL sync, foreign keys, the page cache and the checkpoint
    interval, on each new connection of the pool (the writer's among them)."""
    app = make_app(SQLITE_BUSY_TIMEOUT_MS=1234)
    with app.app_context():
        engine = db.engine
        first, second = engine.raw_connection(), engine.raw_connection()  # two connections, both new
        try:
            for connection in (first, second):
                cursor = connection.cursor()
                settings = {
                    name: cursor.execute(f"PRAGMA {name}").fetchone()[0]
                    for name in ("journal_mode", "busy_timeout", "synchronous", "foreign_keys", "cache_size")
                }
                settings["wal_autocheckpoint"] = cursor.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
                assert settings == {
                    "journal_mode": "wal",
                    "busy_timeout": 1234,
                    "synchronous": 1,  # NORMAL
                    "foreign_keys": 1,
                    "cache_size": -SQLITE_CACHE_KIB,
                    "wal_autocheckpoint": SQLITE_CHECKPOINT_PAGES,
                }
        finally:
            first.close()
            second.close()


def test_sqlite_held_by_an_exclusive_lock(make_app: Any) -> None:
    app = make_app(SQLITE_BUSY_TIMEOUT_MS=50, **FAST)
    client = app.test_client()
    path = make_url(app.config["SQLALCHEMY_DATABASE_URI"]).database
    assert path
    holder = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        locked_at = time.monotonic()
        ids = burst(client, 15)
        body = wait_for(lambda: (b := ready(client))["status"] == "degraded" and b, 30, "ready to say degraded")
        assert body["backlog"]["rows"] == len(ids)
        assert body["backlog"]["oldest_age_seconds"] is not None
        assert "locked" in str(body["database"].get("error")), body
        assert stored(app) == (Counter(), Counter())  # readers still work under WAL; nothing got in
        time.sleep(max(0.0, 2.0 - (time.monotonic() - locked_at)))
        ids += burst(client, 3)  # still answered while locked
        holder.execute("COMMIT")
    finally:
        holder.close()

    assert recorder_of(app).flush(10), recorder_of(app).status()
    assert_stored_once(app, ids)
    body = ready(client)
    assert body["status"] == "ready", body
    assert body["backlog"]["rows"] == 0


def test_a_postgresql_table_locked_holds_neither_the_writer_nor_its_stop_nor_ready(
    model_dir: Path, tmp_path: Path, postgres: Any
) -> None:
    """A session holding a lock on `predictions` (a long migration, a stuck transaction) used to
    hold the writer inside its INSERT for as long as the lock was held, and the SIGTERM drain
    that waits for it (gunicorn then killed the worker); /api/ready waited as long. Now each of
    the writer's statements gives up after RECORDER_WRITE_TIMEOUT_SECONDS, the stop after its
    own deadline, and ready after the connect timeout; nothing answered is lost."""
    with postgres_schema(postgres) as url:
        app = build_app(model_dir, tmp_path / "locked.db", database_url=url, RECORDER_WRITE_TIMEOUT_SECONDS=1, **FAST)
        stopped = False
        try:
            client = app.test_client()
            before = burst(client, 2)
            assert recorder_of(app).flush(10)
            with postgres.connect() as holder:
                schema = make_url(url).query["options"].rpartition("=")[2]
                holder.exec_driver_sql(f'SET search_path TO "{schema}"')
                holder.exec_driver_sql("BEGIN")
                holder.exec_driver_sql("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")
                ids = burst(client, 6)  # answered while the writer's INSERT waits on the lock
                # In threads, so that a wait on the lock fails the test (and closing `holder` ends
                # the wait) rather than hang it.
                pool = ThreadPoolExecutor(1)

                def degraded() -> dict[str, Any]:
                    return wait_for(lambda: (b := ready(client))["status"] == "degraded" and b, 30, "degraded")

                try:
                    body = pool.submit(degraded).result(timeout=15)
                    assert recorder_of(app).status()["database"] == "degraded"
                    assert body["backlog"]["rows"] == len(ids)
                    # the rows stay spooled
                    assert pool.submit(recorder_of(app).stop, timeout=2).result(timeout=2 + 2) is False
                    stopped = True
                finally:
                    pool.shutdown(wait=False)
                holder.exec_driver_sql("ROLLBACK")
            assert spool.scan(app.config["SPOOL_DIR"])["rows"] == len(ids)
            later = build_app(model_dir, tmp_path / "later.db", database_url=url, SPOOL_DIR=app.config["SPOOL_DIR"])
            try:
                assert get_service(later).recorder.replay(10) == (1, True)
                assert_stored_once(later, before + ids)
            finally:
                close_app(later)
        finally:
            if not stopped:
                close_app(app)
            with app.app_context():
                db.engine.dispose()


def test_a_flush_waits_on_a_locked_postgresql_table_no_longer_than_its_deadline(
    model_dir: Path, tmp_path: Path, postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop's drain starts a batch of its own when the writer is between batches (backing off
    after a failure, say): that batch's INSERT waited the whole RECORDER_WRITE_TIMEOUT_SECONDS
    (30 s) on a locked table, past the drain's deadline and gunicorn's graceful timeout."""
    monkeypatch.setattr(Recorder, "start", lambda self: None)  # no writer thread: the flush delivers
    with postgres_schema(postgres) as url:
        app = build_app(model_dir, tmp_path / "flush.db", database_url=url, RECORDER_WRITE_TIMEOUT_SECONDS=30)
        pool = ThreadPoolExecutor(1)
        try:
            ids = burst(app.test_client(), 3)
            with postgres.connect() as holder:
                schema = make_url(url).query["options"].rpartition("=")[2]
                holder.exec_driver_sql(f'SET search_path TO "{schema}"')
                holder.exec_driver_sql("BEGIN")
                holder.exec_driver_sql("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")
                started = time.monotonic()
                try:
                    assert pool.submit(recorder_of(app).flush, 2).result(timeout=8) is False
                finally:
                    pool.shutdown(wait=False)
                took = time.monotonic() - started
                holder.exec_driver_sql("ROLLBACK")
            assert took < 2 + 2, f"the flush took {took:.1f} s for a 2 s deadline"
            assert "lock timeout" in str(recorder_of(app).last_error), recorder_of(app).last_error
            assert recorder_of(app).flush(10)
            assert_stored_once(app, ids)
        finally:
            close_app(app)


def test_metrics_that_fail_neither_fail_a_request_nor_end_the_writer(
    make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backlog gauge is set at the top of each of the writer's ticks, and now and then on a
    request: it raised there once, the writer's thread ended, and an idle worker then held its
    rows until the next request (or its stop). A gauge is not worth either."""
    app = make_app(**FAST)
    recorder = recorder_of(app)
    assert recorder.metrics is not None

    class Broken:
        def set(self, value: float) -> None:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(recorder.metrics, "backlog", Broken())
    client = app.test_client()
    ids = burst(client, 3)
    time.sleep(0.6)  # past BACKLOG_PUBLISH_SECONDS: the next request publishes too
    ids += burst(client, 3)

    wait_for(lambda: len(stored(app)[0]) == len(ids), 10, "the writer to deliver every row")
    assert recorder.status()["writer_running"], "the writer's thread ended"
    assert_stored_once(app, ids)


@pytest.mark.parametrize("path", ["/history", "/dashboard", "/api/model"])
def test_pages_that_read_the_database_say_it_is_unavailable_while_predictions_go_on(
    apps: MakeApp, fault: Fault, path: str
) -> None:
    """An operator opens the dashboard or the history during an outage: a 503 that says what is
    wrong, not a 500 with a 130-line trace in the log; predictions are still answered."""
    app = apps()
    client = app.test_client()
    ids = burst(client, 2)
    assert recorder_of(app).flush(10)
    fault.down(app)

    response = client.get(path)
    if path == "/api/model":  # the model card is still worth answering without the database
        assert response.status_code == 200, response.get_data(as_text=True)[:500]
    else:
        assert response.status_code == 503, response.get_data(as_text=True)[:500]
        assert response.headers["Retry-After"] == "5"
        assert "the database cannot be read now" in response.get_data(as_text=True)
    ids += burst(client, 2)

    fault.up()
    assert client.get(path).status_code == 200
    assert recorder_of(app).flush(10)
    assert_stored_once(app, ids)


def test_database_down_during_a_burst(apps: MakeApp, fault: Fault) -> None:
    app = apps()
    client = app.test_client()
    before = burst(client, 3)  # the database is up: the pool holds live connections
    assert recorder_of(app).flush(10)
    assert ready(client)["status"] == "ready"

    fault.down(app)
    during = burst(client, 15)
    body = wait_for(lambda: (b := ready(client))["status"] == "degraded" and b, 3, "ready to say degraded")
    assert body["database"]["status"] == "degraded"
    assert body["backlog"]["rows"] == len(during)
    assert body["backlog"]["oldest_age_seconds"] is not None

    fault.up()
    assert recorder_of(app).flush(10), recorder_of(app).status()
    assert_stored_once(app, before + during)
    body = ready(client)
    assert body["status"] == "ready", body
    assert body["backlog"]["rows"] == 0


# -- restart -------------------------------------------------------------------------


def test_a_restart_delivers_what_the_stopped_app_left_spooled(apps: MakeApp, fault: Fault, tmp_path: Path) -> None:
    spool_dir = tmp_path / "shared-spool"
    first = apps(SPOOL_DIR=spool_dir)
    fault.down(first)
    ids = burst(first.test_client(), 10)
    assert recorder_of(first).stop(timeout=0.5) is False  # could not drain: the rest stays spooled
    found = spool.scan(spool_dir)
    assert (found["rows"], found["orphaned"]) == (len(ids), 1)
    backup = tmp_path / "spool-copy"
    shutil.copytree(spool_dir, backup)

    fault.up()
    second = apps(SPOOL_DIR=spool_dir)
    recorder = recorder_of(second)
    recorder.start()  # as gunicorn's post_worker_init does: adopts orphans first
    wait_for(lambda: recorder.rows_written == len(ids), 10, "the new writer to deliver the orphans")
    wait_for(lambda: spool.scan(spool_dir)["rows"] == 0, 5, "the delivered segments to be retired")
    assert_stored_once(second, ids)
    assert list(spool_dir.glob(f"*{spool.SUFFIX}")) == []

    # Again: nothing is left to adopt and nothing is written twice.
    assert recorder.replay(timeout=5) == (0, True)
    # A crash between the commit and the bookkeeping: the same segment comes back undelivered.
    for path in backup.glob(f"*{spool.SUFFIX}"):
        shutil.copy(path, spool_dir / path.name)
    assert recorder.replay(timeout=5) == (1, True)
    assert recorder.rows_written == len(ids)
    assert_stored_once(second, ids)


def test_what_a_reload_leaves_spooled_is_delivered_on_recovery_and_by_the_next_stop(
    apps: MakeApp, fault: Fault, tmp_path: Path
) -> None:
    """gunicorn's reload (SIGHUP) starts the new workers, then stops the old ones: with the database
    down, an old worker's rows stay spooled after its writer's start-up adoption has run. They used
    to wait for the next adoption tick (30 s), and a SIGTERM within it left them behind."""
    spool_dir = tmp_path / "shared-spool"
    old, new, last = (apps(SPOOL_DIR=spool_dir) for _ in range(3))
    fault.down(old, new)
    left = burst(old.test_client(), 6)
    recorder = recorder_of(new)
    recorder.start()  # adopts nothing: the old worker still holds its segment
    answered = burst(new.test_client(), 4)  # the new worker's own rows fail too: its database is down
    wait_for(lambda: recorder.database == "degraded", 10, "the new writer to find the database down")
    assert recorder_of(old).stop(timeout=0.5) is False  # the old worker's drain fails: its segment is orphaned

    fault.up()  # the writer's next delivery adopts the orphan at once
    total = len(left) + len(answered)
    wait_for(lambda: count_rows(new) == (total, total), 10, "the orphan to be delivered on recovery")
    assert_stored_once(new, left + answered)

    # And a stop delivers what a process that stopped before it left.
    leaver = apps(SPOOL_DIR=spool_dir)
    fault.down(leaver, last)
    more = burst(leaver.test_client(), 3)
    stopper = recorder_of(last)
    stopper.start()  # adopts nothing: the leaving worker still holds its segment
    assert recorder_of(leaver).stop(timeout=0.5) is False
    fault.up()
    assert stopper.stop(timeout=10) is True
    assert_stored_once(last, left + answered + more)
    assert spool.scan(spool_dir)["rows"] == 0


def test_a_stop_that_comes_during_a_delivery_ends_the_writer_at_once(
    make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop() wakes the writer; a wake-up that came while a batch was delivered used to be
    cleared as stale, and the writer then slept a whole tick (here a minute) before it saw the
    stop: a SIGTERM's drain and every test's clean-up waited for it."""
    app = make_app(RECORDER_FLUSH_SECONDS=60)
    recorder = get_service(app).recorder
    deliver = Recorder.deliver_once

    def stopped_during(self: Recorder) -> int:
        self._stopping.set()  # what stop() does first, then the wake-up
        self._wake.set()
        return deliver(self)

    monkeypatch.setattr(Recorder, "deliver_once", stopped_during)
    assert app.test_client().post("/api/predict", json=PASSENGER).status_code == 200  # starts the writer
    thread = recorder._thread
    assert thread is not None

    thread.join(timeout=30)  # only a guard against a hang: the tick is 60 s

    assert not thread.is_alive(), "the writer slept through the stop"
    monkeypatch.undo()
    assert recorder.flush(5) and count_rows(app) == (1, 1)


def test_a_stop_says_whether_anything_is_left_spooled(
    apps: MakeApp, fault: Fault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator reads in the log that a SIGTERM's drain emptied the spool, or what it left."""
    said: list[str] = []
    for level in ("info", "warning"):
        monkeypatch.setattr(recorder_module.log, level, lambda message, *args: said.append(message % args))
    app = apps()
    ids = burst(app.test_client(), 3)

    assert get_service(app).recorder.stop(timeout=10) is True

    assert said[-1] == f"recorder: stopped, nothing left spooled ({len(ids)} row(s) written by this process)"

    down = apps()
    fault.down(down)
    left = burst(down.test_client(), 2)
    assert get_service(down).recorder.stop(timeout=0.5) is False
    fault.up()
    assert said[-1].startswith(f"recorder: stopping with {len(left)} row(s) spooled")


def test_recorder_replay_and_status_commands(apps: MakeApp, fault: Fault, tmp_path: Path) -> None:
    spool_dir = tmp_path / "shared-spool"
    first = apps(SPOOL_DIR=spool_dir)
    fault.down(first)
    ids = burst(first.test_client(), 8)
    recorder_of(first).stop(timeout=0.3)

    operator = apps(SPOOL_DIR=spool_dir, tables=False)  # the database is down: no migrations
    status = operator.test_cli_runner().invoke(args=["recorder", "status"])
    assert status.exit_code == 0, status.output
    assert f"backlog: {len(ids)} row(s) in 1 segment(s)" in status.output
    assert "1 segment(s) left by stopped processes" in status.output
    assert "database: degraded" in status.output

    failed = operator.test_cli_runner().invoke(args=["recorder", "replay", "--timeout", "0.5"])
    assert failed.exit_code != 0, failed.output
    assert f"{len(ids)} row(s) could not be written" in failed.output
    assert "stay spooled" in failed.output
    assert spool.scan(spool_dir)["rows"] == len(ids)

    fault.up()
    replayer = apps(SPOOL_DIR=spool_dir, tables=False)
    done = replayer.test_cli_runner().invoke(args=["recorder", "replay", "--timeout", "10"])
    assert done.exit_code == 0, done.output
    assert f"adopted 1 segment(s); wrote {len(ids)} new row(s)" in done.output
    assert_stored_once(replayer, ids)

    status = replayer.test_cli_runner().invoke(args=["recorder", "status"])
    assert status.exit_code == 0, status.output
    assert "backlog: 0 row(s) in 0 segment(s)" in status.output
    assert "database: ok" in status.output

    again = apps(SPOOL_DIR=spool_dir, tables=False).test_cli_runner().invoke(args=["recorder", "replay"])
    assert again.exit_code == 0, again.output
    assert "adopted 0 segment(s); wrote 0 new row(s)" in again.output
    assert_stored_once(replayer, ids)


def test_replay_leaves_a_running_apps_spool_alone(
    apps: MakeApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool_dir = tmp_path / "shared-spool"
    serving = apps(SPOOL_DIR=spool_dir)
    monkeypatch.setattr(recorder_of(serving), "start", lambda: None)  # its writer is busy elsewhere
    ids = burst(serving.test_client(), 4)

    result = apps(SPOOL_DIR=spool_dir).test_cli_runner().invoke(args=["recorder", "replay", "--timeout", "2"])
    assert result.exit_code == 0, result.output
    assert "adopted 0 segment(s); wrote 0 new row(s)" in result.output
    assert stored(serving) == (Counter(), Counter())

    assert recorder_of(serving).flush(10)
    assert_stored_once(serving, ids)


# -- the local disk fails --------------------------------------------------------------


def assert_refused(client: FlaskClient) -> None:
    """The API and the form both answer 503 and no prediction."""
    api = client.post("/api/predict", json=PASSENGER)
    assert api.status_code == 503, api.get_data(as_text=True)
    body = api.get_json()
    assert body["code"] == 503 and "could not be kept" in body["message"]
    assert "predictions" not in body

    token = csrf_token(client.get("/").get_data(as_text=True))
    form = client.post("/", data={**FORM_VALUES, "csrf_token": token})
    assert form.status_code == 503
    assert form.mimetype == "text/html"
    html = form.get_data(as_text=True)
    assert "503 Service Unavailable" in html
    assert "could not be kept" in html


def test_spool_folder_under_a_regular_file_fails_requests_loudly(apps: MakeApp, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the spool folder should be")
    app = apps(SPOOL_DIR=blocker / "spool")
    client = app.test_client()
    assert_refused(client)
    assert count_rows(app) == (0, 0)
    response = client.get("/api/ready")
    assert response.status_code == 503, response.get_data(as_text=True)  # every prediction fails here
    body = response.get_json()
    assert body["spool"]["status"] == "failing" and "Not a directory" in body["spool"]["error"], body
    assert body["backlog"]["rows"] == 0


def test_full_disk_fails_requests_loudly_and_recovers(apps: MakeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    app = apps()
    client = app.test_client()
    disk = FullDisk()
    monkeypatch.setattr(spool, "os", disk)
    assert_refused(client)
    assert disk.calls >= 2
    assert count_rows(app) == (0, 0)
    # Every prediction fails: a load balancer is told to send them elsewhere.
    response = client.get("/api/ready")
    assert response.status_code == 503, response.get_data(as_text=True)
    body = response.get_json()
    assert body["status"] == "not ready" and body["spool"]["status"] == "failing", body
    assert "No space left on device" in body["spool"]["error"]
    assert client.get("/api/ready").status_code == 503  # probed again: still full

    disk.full = False  # room again: ready says so before any request has succeeded
    assert client.get("/api/ready").get_json()["spool"] == {"status": "ok"}
    assert not [p for p in Path(app.config["SPOOL_DIR"]).glob(".*probe*")], "a probe file was left"
    ids = burst(client, 3)
    assert recorder_of(app).flush(10)
    assert_stored_once(app, ids)


def test_disk_filling_up_mid_line_loses_no_later_answer(apps: MakeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk takes half of a request's line and then refuses: that request answers 503.
    Once the disk has room again, the next answered prediction must still reach the tables."""
    app = apps()
    client = app.test_client()
    disk = FullDisk(short_first=True)
    monkeypatch.setattr(spool, "os", disk)
    response = client.post("/api/predict", json=PASSENGER)
    assert response.status_code == 503

    disk.full = False
    ids = predict(client, 2)
    recorder = recorder_of(app)
    flushed = recorder.flush(2)
    try:
        assert_stored_once(app, ids)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; flush() said {flushed}, recorder status: {recorder.status()}") from None
    assert recorder.backlog()[0] == 0


def test_an_undecodable_spool_line_does_not_block_the_answers_after_it(apps: MakeApp, tmp_path: Path) -> None:
    """A segment left by a stopped process holds a corrupt line (half a line, then a whole
    one, as a disk filling up leaves it) before good ones. The next writer must deliver the
    good lines and its own later answers instead of retrying the corrupt one forever."""
    spool_dir = tmp_path / "shared-spool"
    spool_dir.mkdir()
    good = [make_record() for _ in range(3)]
    broken = spool.encode([make_record()], spooled_at=time.time())
    lines = (
        broken[: len(broken) // 2]
        + spool.encode(good[:1], spooled_at=time.time())
        + spool.encode(good[1:], spooled_at=time.time())
    )
    (spool_dir / f"otherhost-1-1-deadbeef{spool.SUFFIX}").write_bytes(lines)

    app = apps(SPOOL_DIR=spool_dir)
    recorder = recorder_of(app)
    ids = predict(app.test_client(), 2)  # starts the writer, which adopts the orphan first
    try:
        wait_for(lambda: recorder.rows_written >= len(ids) + 2, 3, "the writer to get past the corrupt line")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; recorder status: {recorder.status()}") from None
    assert recorder.status()["database"] == "ok", recorder.status()
    expected = Counter(uuid.UUID(i) for i in ids + [r[0] for r in good[1:]])
    predictions, features = stored(app)
    for found in (predictions, features):
        found.pop(uuid.UUID(good[0][0]), None)  # glued to the torn half: a fix may or may not salvage it
    assert predictions == expected
    assert features == expected


# -- recording off ------------------------------------------------------------------------


def test_recording_off_answers_and_stores_nothing(apps: MakeApp) -> None:
    app = apps(RECORDING=False)
    client = app.test_client()
    ids = burst(client, 3)
    assert ids
    token = csrf_token(client.get("/").get_data(as_text=True))
    assert client.post("/", data={**FORM_VALUES, "csrf_token": token}).status_code == 200
    assert count_rows(app) == (0, 0)
    assert spool.scan(Path(app.config["SPOOL_DIR"]))["rows"] == 0
    assert not Path(app.config["SPOOL_DIR"]).exists()
    body = ready(client)
    assert body["backlog"]["rows"] == 0 and body["backlog"]["writer_running"] is False
