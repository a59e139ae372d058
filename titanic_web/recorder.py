"""Get answered predictions into feature_store and predictions without making requests wait.

The request calls :meth:`Recorder.record`, which appends the records to a
local-disk spool (:mod:`titanic_web.spool`) and returns: that append is the
only storage work on the request path, and if it fails the request fails,
so nothing is ever answered that is not kept. A writer thread in each process
delivers the spool to the database in batches, one transaction per batch,
retrying with backoff while the database is slow, locked or down. Every insert
is idempotent on the prediction uuid, so a resent batch never duplicates a row.

Segments left by a process that died (SIGKILL, crash, a restart with the
database down) are adopted by the next writer that starts, or by
``flask --app titanic_web recorder replay``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from flask import Flask
from sqlalchemy import Connection, event, insert, select
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from titanic_web import jsontext, spool
from titanic_web.extensions import db
from titanic_web.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES, features_json
from titanic_web.models import SOURCES, FeatureRow, PredictionRow, limit_waits, now_utc
from titanic_web.requestlog import MAX_REQUEST_ID

if TYPE_CHECKING:
    from titanic_web.metrics import Metrics

log = logging.getLogger(__name__)


class WriterBusy(Exception):
    """Another thread of this process is delivering a batch (the writer, stalled on the database)."""


class RecorderError(Exception):
    """Predictions could not be kept on local disk; the request must not succeed."""


@dataclass(frozen=True)
class Record:
    """Everything stored about one answered prediction."""

    id: uuid.UUID
    passenger_id: int | None
    survived: int
    probability: float
    model_version: str
    source: str
    features: dict[str, Any]
    raw_input: dict[str, Any]
    created_at: datetime = field(default_factory=now_utc)
    request_id: str | None = None  # the request that asked (its X-Request-ID)
    latency_ms: float | None = None  # from the request's arrival until its records were spooled

    def to_fields(self) -> list[str]:
        """The record as the spool keeps it: text fields in :data:`FIELDS` order."""
        return list(
            spool_rows(
                [self.id.hex],
                [self.passenger_id],
                [self.survived],
                [float(self.probability)],
                model_version=self.model_version,
                source=self.source,
                created_at=self.created_at,
                features_json=[json.dumps(self.features, separators=(",", ":"), allow_nan=False)],
                raw_json=[json.dumps(self.raw_input, separators=(",", ":"), allow_nan=False)],
                request_id=self.request_id,
                latency_ms=self.latency_ms,
            )[0]
        )


def spool_rows(
    ids: Sequence[str],
    passenger_ids: Sequence[int | None],
    survived: Iterable[int],
    probabilities: Iterable[float],
    *,
    model_version: str,
    source: str,
    created_at: datetime,
    features_json: Iterable[str],
    raw_json: Iterable[str],
    request_id: str | None = None,
    latency_ms: float | str | None = None,
) -> list[tuple[str, ...]]:
    """Many records as the spool keeps them, each a tuple of text fields in :data:`FIELDS` order.

    One request id and one latency for all of them (a request's rows share both);
    ``latency_ms`` may be :data:`PENDING_LATENCY`, filled in by :meth:`Staged.commit`.
    """
    created, latency = _shared_fields(created_at, latency_ms)
    if len(ids) == 1:  # one passenger, the usual request: the row as it is, without the column set-up
        (pid,), (alive,), (probability,) = passenger_ids, survived, probabilities
        (features,), (raw,) = features_json, raw_json
        return [
            (
                ids[0],
                "" if pid is None else str(pid),
                str(alive),
                float.__repr__(probability),
                model_version,
                source,
                created,
                features,
                raw,
                request_id or "",
                latency,
            )
        ]
    return list(
        zip(
            ids,
            ["" if pid is None else str(pid) for pid in passenger_ids],
            map(str, survived),
            map(float.__repr__, probabilities),
            itertools.repeat(model_version),
            itertools.repeat(source),
            itertools.repeat(created),
            features_json,
            raw_json,
            itertools.repeat(request_id or ""),
            itertools.repeat(latency),
        )
    )


def spool_columns(
    ids: Sequence[str],
    passenger_ids: Sequence[int | None],
    survived: Sequence[int],
    probabilities: Any,
    *,
    model_version: str,
    source: str,
    created_at: datetime,
    features: Sequence[Sequence[Any]],
    raw_parts: Sequence[Sequence[str]],
    request_id: str | None = None,
    latency_ms: float | str | None = None,
    spooled_at: float,
) -> bytes:
    """``spool.encode(spool_rows(...))`` for many records, kept by column (:func:`spool.encode_columns`).

    ``features`` are the engineered rows (:data:`titanic_web.features.FEATURES` order), kept
    as numbers: their JSON text, which costs a batch request a sixth of its time, is written by
    whoever reads the line (the writer, after the answer), and is the text that
    :func:`titanic_web.features.features_json` gives. ``probabilities`` are floats (a numpy
    array will do), kept exactly. ``raw_parts`` are the raw inputs' JSON in pieces by column
    (:attr:`titanic_web.schema.CheckedRows.parts`), joined by the reader too. A chunk that a
    line by column cannot hold, so that the writer could not read it back (a feature text
    that is not a string, a PassengerId that is not a whole number, a separator in a piece),
    is kept by row instead.
    """
    created, latency = _shared_fields(created_at, latency_ms)
    columns = list(zip(*features, strict=True))
    width = len(NUMERIC_FEATURES)
    try:
        columns_line = [
            spool.fixed(ids, width=32),
            spool.ints(passenger_ids),
            spool.ints(survived),
            spool.floats(probabilities),
            spool.same(model_version),
            spool.same(source),
            spool.same(created),
            spool.objects(NUMERIC_FEATURES, columns[:width], CATEGORICAL_FEATURES, columns[width:]),
            spool.pieces(raw_parts),
            spool.same(request_id or ""),
            spool.same(latency),
        ]
        return spool.encode_columns(len(ids), columns_line, spooled_at=spooled_at)
    except ValueError:  # a value a line by column cannot hold: kept by row, as it is
        rows = spool_rows(
            ids,
            passenger_ids,
            survived,
            list(map(float, probabilities)),
            model_version=model_version,
            source=source,
            created_at=created_at,
            features_json=features_json(features),
            raw_json=jsontext.join_pieces(raw_parts),
            request_id=request_id,
            latency_ms=latency_ms,
        )
        return spool.encode(rows, spooled_at=spooled_at)


def _shared_fields(created_at: datetime, latency_ms: float | str | None) -> tuple[str, str]:
    """The time and latency fields, one for all of a request's rows."""
    latency = (latency_ms or "") if latency_ms is None or isinstance(latency_ms, str) else _latency_text(latency_ms)
    return utc_text(created_at), latency


#: The last second :func:`utc_text` wrote (its fields, as a key) and its text up to the seconds:
#: requests within one second share it, and ``isoformat`` costs a request a microsecond.
_last_second: tuple[tuple[int, ...], str] = ((), "")


def utc_text(at: datetime) -> str:
    """A time as the spool keeps it: ``at.astimezone(UTC).isoformat(" ", "microseconds")``."""
    global _last_second
    if at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    second = (at.second, at.minute, at.hour, at.day, at.month, at.year)
    last, text = _last_second  # one read: another thread may replace it, never half of it
    if second != last:
        text = at.isoformat(" ", "seconds")[: -len(_UTC_SUFFIX)]
        _last_second = (second, text)
    return f"{text}.{at.microsecond:06d}{_UTC_SUFFIX}"


def _latency_text(milliseconds: float) -> str:
    return f"{milliseconds:.3f}"


#: Requests set the backlog gauge at most this often (and the writer on each tick and delivery):
#: a gauge write per request would cost more than the figure is worth.
BACKLOG_PUBLISH_SECONDS = 0.5

#: Stands for the request's latency in staged rows until :meth:`Staged.commit` knows it, so
#: every row of a request gets the one value measured when the last of them is spooled.
#: No other field can hold it: the JSON fields escape control characters, the rest are plain.
PENDING_LATENCY = "\x01"
_PENDING_BYTES = PENDING_LATENCY.encode()


#: A spooled record's fields, in order: what :meth:`Record.to_fields` writes.
FIELDS = (
    "id",
    "passenger_id",
    "survived",
    "probability",
    "model_version",
    "source",
    "created_at",
    "features",
    "raw_input",
    "request_id",
    "latency_ms",
)
#: Records spooled before request ids were stored end at raw_input; they are still delivered.
_OLD_WIDTH = FIELDS.index("raw_input") + 1

#: One record checked and ready for the database: its :data:`FIELDS` as spooled, text, with ''
#: for NULL (passenger_id, request_id, latency_ms). PostgreSQL takes the text as it is; the
#: other paths make numbers of it (:func:`typed`).
Row = tuple[str, ...]

_UTC_SUFFIX = "+00:00"
#: PostgreSQL's integer column holds these, and no more.
_INT4 = range(-(2**31), 2**31)
#: The model_version columns' length.
MAX_MODEL_VERSION = 64
#: A spooled time: what ``isoformat(" ", "microseconds")`` writes of a UTC time (Python reads
#: other layouts too, a ``T`` or a week date, which the databases do not).
_UTC_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}\+00:00")


def parse_fields(fields: Sequence[str]) -> Row:
    """Check one spooled record.

    Everything a database could refuse is checked here, so a damaged line is
    set aside when it is read instead of failing every batch it is part of; and
    every number is written as both Python and the databases read it (ASCII
    digits, no ``_``), so each reads the same value.

    :raise ValueError: not a record that :meth:`Record.to_fields` wrote.
    """
    if len(fields) == _OLD_WIDTH:
        fields = [*fields, "", ""]
    elif len(fields) != len(FIELDS):
        raise ValueError(
            f"a spooled record has {len(FIELDS)} fields ({_OLD_WIDTH} fields if spooled before request ids), "
            f"this one {len(fields)}"
        )
    uid, passenger_id, survived, probability, version, source, created_at, features, raw_input, rid, latency = fields
    if len(uid) != 32 or len(bytes.fromhex(uid)) != 16:
        raise ValueError(f"bad prediction id {uid!r}")
    if passenger_id and (_plain_number(passenger_id) or int(passenger_id) not in _INT4):
        raise ValueError(f"bad passenger id {passenger_id[:80]!r}")
    if survived != "0" and survived != "1":
        raise ValueError(f"bad survived {survived[:80]!r}")
    if not 0.0 <= _number(probability) <= 1.0:
        raise ValueError(f"bad probability {probability[:80]!r}")
    datetime.fromisoformat(created_at)  # the ranges (a 13th month); the layout below
    if not _UTC_TIME.fullmatch(created_at):
        raise ValueError(f"bad time {created_at!r}")
    # A raw control character is no JSON (json.dumps escapes them); nor may any field hold the
    # separator of PostgreSQL's columns (_PG_SEPARATOR), which none of the checks here allow.
    if not (features[:1] == "{" and features[-1:] == "}" and raw_input[:1] == "{" and raw_input[-1:] == "}") or (
        _PG_SEPARATOR in features or _PG_SEPARATOR in raw_input
    ):
        raise ValueError("features and raw input must be JSON objects")
    if source not in SOURCES or not version or len(version) > MAX_MODEL_VERSION or not version.isprintable():
        raise ValueError(f"bad source {source[:80]!r} or model version {version[:80]!r}")
    if len(rid) > MAX_REQUEST_ID or not rid.isprintable():
        raise ValueError(f"bad request id {rid[:80]!r}")
    if latency and not 0.0 <= _number(latency) < _INFINITY:
        raise ValueError(f"bad latency {latency[:80]!r}")
    return tuple(fields)


_INFINITY = float("inf")
_NAN = float("nan")


def _number(text: str) -> float:
    """The float text stands for, read once; NaN, which no range holds, if it is no number or
    not one that Python and the databases read as the same value: not a plain number
    (:func:`_plain_number`), or one too small for a float, which Python reads as zero and
    PostgreSQL refuses (``1e-400``)."""
    if _plain_number(text):
        return _NAN
    try:
        value = float(text)
    except ValueError:
        return _NAN
    if value == 0.0 and text.lstrip("+-").lower().partition("e")[0].strip("0.") != "":
        return _NAN  # rare: a zero is written with zeros only before its exponent
    return value


def _plain_number(text: str) -> bool:
    """True if text is not written as :func:`str` writes a number: Python reads ``1_000`` and
    other digits than ASCII's, which the databases refuse (the value itself is checked apart)."""
    return not text.isascii() or "_" in text or text != text.strip()


def typed(row: Row) -> tuple[Any, ...]:
    """A checked row with its numbers as numbers and NULLs as None, for the paths that bind values."""
    uid, pid, survived, probability, version, source, created_at, features, raw_input, rid, latency = row
    return (
        uid,
        int(pid) if pid else None,
        int(survived),
        float(probability),
        version,
        source,
        created_at,
        features,
        raw_input,
        rid or None,
        float(latency) if latency else None,
    )


#: SQLite: the two INSERTs as a head, one row's VALUES and a tail, sent through the driver
#: (SQLAlchemy's per-row bind processing cost more than the database itself). Times keep
#: SQLAlchemy's DateTime layout (UTC, no offset), uuids their 32 hex digits.
_SQLITE_PREDICTIONS = (
    "INSERT INTO predictions (id, passenger_id, survived, probability, model_version, source, created_at,"
    " request_id, latency_ms) VALUES ",
    "(?, ?, ?, ?, ?, ?, ?, ?, ?)",
    " ON CONFLICT (id) DO NOTHING",
)
_SQLITE_FEATURES = (
    "INSERT INTO feature_store (prediction_id, features, raw_input, model_version, created_at) VALUES ",
    "(?, ?, ?, ?, ?)",
    " ON CONFLICT (prediction_id) DO NOTHING",
)
#: Rows per SQLite INSERT (9 parameters a row: 4,500, under the 32,766 of any SQLite since 3.32).
ROWS_PER_STATEMENT = 500

#: PostgreSQL: one INSERT per table and batch, so the statement text never changes (prepared
#: once per connection) and a batch is one round trip. Each column goes as one text, its
#: values joined by _PG_SEPARATOR, which the server splits (string_to_array; '' is NULL in
#: the columns that may be NULL, and an empty array, which a one-row column of '' splits
#: into, leaves that row NULL too) and casts to the column's type. One text per column
#: rather than an array of values: the driver writes an array value by value in Python,
#: which cost the writer a third of its time. No checked row holds the separator
#: (:func:`parse_fields`), so the texts split back into exactly their rows.
_PG_SEPARATOR = "\x1e"


class _Inserts(NamedTuple):
    """A table's INSERTs on PostgreSQL."""

    new: str  #: every row new
    skipping: str  #: the same, skipping rows already stored


def _postgres_inserts(table: str, columns: str, casts: Sequence[tuple[str, bool]], key: str) -> _Inserts:
    """A table's INSERTs, from its columns' casts and whether each may be NULL."""
    head = f"INSERT INTO {table} ({columns}) SELECT * FROM unnest("
    separator = f"E'\\x{ord(_PG_SEPARATOR):02x}'"
    null = ", ''"  # '' is NULL in a column that may be NULL
    split = ", ".join(f"string_to_array(%s, {separator}{null if nullable else ''}){cast}" for cast, nullable in casts)
    return _Inserts(f"{head}{split})", f"{head}{split}) ON CONFLICT ({key}) DO NOTHING")


_POSTGRES_PREDICTIONS = _postgres_inserts(
    "predictions",
    "id, passenger_id, survived, probability, model_version, source, created_at, request_id, latency_ms",
    [
        ("::uuid[]", False),
        ("::int[]", True),
        ("::smallint[]", False),
        ("::float8[]", False),
        ("", False),
        ("", False),
        ("::timestamptz[]", False),
        ("", True),
        ("::float8[]", True),
    ],
    "id",
)
_POSTGRES_FEATURES = _postgres_inserts(
    "feature_store",
    "prediction_id, features, raw_input, model_version, created_at",
    [("::uuid[]", False), ("::json[]", False), ("::json[]", False), ("", False), ("::timestamptz[]", False)],
    "prediction_id",
)
#: PostgreSQL's code for a unique violation: a batch holding rows already stored.
_UNIQUE_VIOLATION = "23505"


def write_batch(session: Session, rows: Sequence[Row], *, portable: bool = False) -> int:
    """Insert checked records into both tables, skipping uuids already there; commit.

    Returns how many predictions were new. Safe to call again with the same
    rows: every row is keyed by the prediction uuid. SQLite takes ``INSERT ... ON
    CONFLICT DO NOTHING`` through the driver, a few statements a batch; PostgreSQL
    a plain INSERT a table, and the same with ON CONFLICT DO NOTHING only if the
    batch held rows stored before (:func:`_write_postgres_batch`); other databases
    (or ``portable=True``) go through SQLAlchemy Core.

    Whole statements rather than the driver's executemany: the database then works
    through many rows at once, where executemany hands each row back to Python, and
    the writer thread waits for the interpreter lock once a row while requests hold it
    (sqlite3 takes it again after every row).
    """
    by_id: dict[str, Row] = {}
    for row in rows:
        by_id.setdefault(row[0], row)  # a uuid twice in one batch: keep one
    new = 0
    if by_id:
        dialect = None if portable else session.get_bind().dialect.name
        unique = list(by_id.values())
        if dialect == "sqlite":
            new = _write_sqlite(session.connection(), unique)
        elif dialect == "postgresql":
            new = _write_postgres_batch(session, unique)
        else:
            new = _write_portable(session, unique)
    session.commit()
    return new


def write_apart(
    session: Session, rows: Sequence[Row], *, written: Callable[[int], None] | None = None
) -> list[tuple[Row, Exception]]:
    """:func:`write_batch`; if the database refuses a value in it (a data error), the rows again
    in halves, each half its own transaction, down to the rows it refuses alone. Returns the
    refused rows, each with the database's reason; ``written`` is called with the new
    predictions of each part as it commits (so a failure after some parts counts them too).

    :func:`parse_fields` checks all that it can at a row's cost; what it lets through (text
    that PostgreSQL's ``json`` type does not read, say) would otherwise fail its batch on
    every retry, and hold back every answer spooled after it. A halved batch commits part by
    part: resent after a crash, its rows are keyed by their uuids, as any batch is.

    :raise Exception: any other error; or the data error itself when a batch of several rows
        has every one refused, which is the database's doing (a schema it does not match),
        so that it is retried rather than emptied row by row. A row refused alone cannot be
        told from that, and is set aside like a damaged line, so that it cannot hold back a
        segment (the tail of one that is full, or left by a stopped process) for ever.
    """
    refused = _write_halves(session, list(rows), written or (lambda new: None))
    if len(refused) > 1 and len(refused) == len(rows):
        raise refused[0][1]
    return refused


def _write_halves(session: Session, rows: list[Row], written: Callable[[int], None]) -> list[tuple[Row, Exception]]:
    try:
        new = write_batch(session, rows)
    except DataError as exc:
        session.rollback()
        if len(rows) == 1:
            return [(rows[0], exc)]
    else:
        written(new)
        return []
    half = len(rows) // 2
    return _write_halves(session, rows[:half], written) + _write_halves(session, rows[half:], written)


def _write_sqlite(connection: Connection, checked: list[Row]) -> int:
    rows = list(map(typed, checked))
    stamps = [r[6][: -len(_UTC_SUFFIX)] for r in rows]
    predictions = [(*r[:6], stamp, r[9], r[10]) for r, stamp in zip(rows, stamps, strict=True)]
    features = [(r[0], r[7], r[8], r[4], stamp) for r, stamp in zip(rows, stamps, strict=True)]
    new = _insert_values(connection, _SQLITE_PREDICTIONS, predictions)
    _insert_values(connection, _SQLITE_FEATURES, features)
    return new


def _insert_values(connection: Connection, statement: tuple[str, str, str], rows: list[tuple[Any, ...]]) -> int:
    """Insert rows, ROWS_PER_STATEMENT to a statement; return the rows inserted."""
    head, values, tail = statement
    inserted = 0
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        text = head + ",".join(itertools.repeat(values, len(chunk))) + tail
        inserted += connection.exec_driver_sql(text, tuple(itertools.chain.from_iterable(chunk))).rowcount
    return inserted


def _write_postgres_batch(session: Session, rows: list[Row]) -> int:
    """Insert a batch as if every row were new; if some were stored before, again skipping them.

    A plain INSERT costs the server a quarter less than ``ON CONFLICT DO NOTHING``, whose
    every row is a speculative insertion, and a batch is almost always new: only one that
    was sent before holds stored rows (the writer stopped between its commit and recording
    how far it got, or the commit's answer was lost). That batch fails on the primary key,
    is rolled back, and goes again with ``ON CONFLICT DO NOTHING``; the server logs the
    failed attempt as an error.
    """
    try:
        return _write_postgres(session.connection(), rows, skip_stored=False)
    except IntegrityError as exc:
        if getattr(exc.orig, "sqlstate", None) != _UNIQUE_VIOLATION:
            raise
    session.rollback()
    log.info("recorder: a batch of %d rows held rows stored before; sending it again without them", len(rows))
    return _write_postgres(session.connection(), rows, skip_stored=True)


def _write_postgres(connection: Connection, rows: list[Row], *, skip_stored: bool) -> int:
    uid, pid, alive, probability, version, source, created, feature, raw, rid, latency = map(
        _PG_SEPARATOR.join, zip(*rows, strict=True)
    )
    into_predictions, into_features = (
        (_POSTGRES_PREDICTIONS.skipping, _POSTGRES_FEATURES.skipping)
        if skip_stored
        else (_POSTGRES_PREDICTIONS.new, _POSTGRES_FEATURES.new)
    )
    new: int = connection.exec_driver_sql(
        into_predictions, (uid, pid, alive, probability, version, source, created, rid, latency)
    ).rowcount
    connection.exec_driver_sql(into_features, (uid, feature, raw, version, created))
    return new


def _write_portable(session: Session, checked: list[Row]) -> int:
    """Insert through SQLAlchemy Core: look the uuids up first (the primary key still guards races)."""
    rows = list(map(typed, checked))
    ids = [uuid.UUID(r[0]) for r in rows]
    existing: set[uuid.UUID] = set()
    for start in range(0, len(ids), 500):
        existing.update(session.scalars(select(PredictionRow.id).where(PredictionRow.id.in_(ids[start : start + 500]))))
    fresh = [(i, r, datetime.fromisoformat(r[6])) for i, r in zip(ids, rows, strict=True) if i not in existing]
    if fresh:
        session.execute(
            insert(PredictionRow),
            [
                {
                    "id": i,
                    "passenger_id": r[1],
                    "survived": r[2],
                    "probability": r[3],
                    "model_version": r[4],
                    "source": r[5],
                    "created_at": at,
                    "request_id": r[9],
                    "latency_ms": r[10],
                }
                for i, r, at in fresh
            ],
        )
        session.execute(
            insert(FeatureRow),
            [
                {
                    "prediction_id": i,
                    "features": json.loads(r[7]),
                    "raw_input": json.loads(r[8]),
                    "model_version": r[4],
                    "created_at": at,
                }
                for i, r, at in fresh
            ],
        )
    return len(fresh)


class Recorder:
    """Spools records on the request path; a per-process writer thread delivers them."""

    def __init__(
        self,
        spool_dir: Path,
        *,
        batch_rows: int = 1000,
        flush_interval: float = 1.0,
        retry_max: float = 30.0,
        adopt_interval: float = 30.0,
        write_timeout: float = 30.0,
        fsync: bool = False,
    ) -> None:
        self.spool = spool.Spool(spool_dir, fsync=fsync)
        self.batch_rows = batch_rows
        self.flush_interval = flush_interval
        self.retry_max = retry_max
        #: Seconds a batch may wait on PostgreSQL, for a statement or a lock (0: no limit).
        self.write_timeout = write_timeout
        self.adopt_interval = adopt_interval
        self.app: Flask | None = None
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._start_lock = threading.Lock()
        self._deliver_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._next_adopt = 0.0
        self.database = "unknown"  # ok | degraded | unknown (nothing written yet)
        self.last_error: str | None = None
        self.rows_written = 0
        self.rows_spooled = 0
        self.batches_failed = 0
        self.lines_quarantined = 0
        #: Where the counters and the backlog are also exported (GET /metrics); set by the app.
        self.metrics: Metrics | None = None
        self._backlog_published = 0.0  # time.time() the backlog gauge was last set
        self._spooled_published = 0  # rows_spooled as last added to the metrics' counter
        self._publish_lock = threading.Lock()
        #: Why the spool last refused a request's rows, until it takes some again (see spool_status).
        self.spool_error: str | None = None
        #: The deadline of a flush running in this thread (see _limit_waits).
        self._flushing = threading.local()

    def init_app(self, app: Flask) -> None:
        """Bind to the app whose database the writer delivers to."""
        self.app = app

    # -- the request side -------------------------------------------------
    def record(self, records: Sequence[Record]) -> None:
        """Keep the records on local disk, wake the writer, return without waiting for it.

        :raise RecorderError: the spool could not be written; nothing was kept.
        """
        if not records:
            return
        now = time.time()
        rows = [r.to_fields() for r in records]
        self._append(spool.encode(rows, spooled_at=now), len(records), now, rows)

    def stage(self, *, arrived: float | None = None) -> Staged:
        """Hold a big request's records back until all its rows have passed (see :class:`Staged`).

        ``arrived`` (``time.perf_counter()`` at the request's arrival) sets the
        latency that :meth:`Staged.commit` writes into rows staged with :data:`PENDING_LATENCY`.
        """
        return Staged(self, arrived=arrived)

    def _append(self, line: bytes, rows: int, spooled_at: float, fields: Sequence[Sequence[str]] | None = None) -> None:
        try:
            self.spool.append(line, rows=rows, spooled_at=spooled_at, fields=fields)
        except spool.SpoolError as exc:
            raise self._refused(exc) from exc
        self._spooled(rows, spooled_at)

    def _refused(self, exc: spool.SpoolError) -> RecorderError:
        """The error a request fails with when the spool refused its rows; remembered for readiness."""
        log.error("%s", exc)
        self.spool_error = str(exc)
        return RecorderError(str(exc))

    def spool_status(self) -> dict[str, Any]:
        """Whether the spool takes rows: ``{"status": "ok"}``, or ``"failing"`` with the error.

        Once a request's rows were refused, the folder is probed on each call until it takes a
        block again (the disk was freed, the folder fixed): a worker whose requests all fail
        then says so to its load balancer, and says when it can take requests again.
        """
        if self.spool_error is not None:
            try:
                self.spool.probe()
            except spool.SpoolError as exc:
                self.spool_error = str(exc)
                return {"status": "failing", "error": self.spool_error}
            self.spool_error = None
        return {"status": "ok"}

    def _spooled(self, rows: int, spooled_at: float) -> None:
        """Count rows now in the spool, and make sure the writer will deliver them."""
        self.rows_spooled += rows
        self.spool_error = None  # it takes rows again
        if self.metrics is not None and spooled_at >= self._backlog_published + BACKLOG_PUBLISH_SECONDS:
            self.publish_backlog()
        self.start()
        # A transaction per request would cost more than the request: the writer
        # delivers on its RECORDER_FLUSH_SECONDS tick, or now if a batch is full.
        self._wake_if_full()

    def _wake_if_full(self) -> None:
        if self.spool.backlog_rows >= self.batch_rows:
            self._wake.set()

    # -- the writer -------------------------------------------------------
    def start(self) -> None:
        """Start this process's writer (idempotent; a forked child starts its own)."""
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        with self._start_lock:
            if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
                return
            if self.app is None:
                raise RuntimeError("Recorder.init_app(app) was not called")
            self._pid = os.getpid()
            self._stopping.clear()
            self._next_adopt = 0.0
            self._thread = threading.Thread(target=self._run, name="recorder-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        delay = 0.0
        while not self._stopping.is_set():
            self.publish_backlog()  # what requests spooled since the last tick, also while the database fails
            try:
                if time.monotonic() >= self._next_adopt:
                    adopted = self.spool.adopt_orphans()
                    if adopted:
                        log.info("recorder: adopted %d spool segment(s) left by stopped processes", adopted)
                        self.publish_backlog()
                    self._next_adopt = time.monotonic() + self.adopt_interval
                self.deliver_once()
            except Exception as exc:  # keep running whatever the database does
                self._failed(exc)
                delay = min(self.retry_max, max(0.25, delay * 2))
                self._stopping.wait(delay)
                continue
            delay = 0.0
            # No full batch waiting: wait for the tick, or for requests to fill one. A wake-up set
            # while this batch was delivered (its rows still counted) is stale: cleared first. But
            # stop() sets its stop before its wake-up: a stop seen here is not slept through.
            self._wake.clear()
            if self._stopping.is_set():
                break
            if self.spool.backlog_rows < self.batch_rows:
                self._wake.wait(self.flush_interval)

    def deliver_once(self, *, wait: float | None = None) -> int:
        """Deliver one batch from the spool; return the rows it held (0: nothing waiting).

        Lines this process appended are delivered from the rows it kept of them in memory
        (:meth:`spool.Spool.next_kept`), checked as if read back; other lines (adopted,
        published, or past what is kept) are read back from disk and decoded.

        :raise WriterBusy: another thread was still delivering after ``wait`` seconds
            (None: wait as long as it takes).
        """
        assert self.app is not None
        if not self._deliver_lock.acquire(timeout=-1 if wait is None else wait):
            raise WriterBusy("the writer is still delivering a batch")
        try:
            return self._deliver_next()
        finally:
            self._deliver_lock.release()

    def _deliver_next(self) -> int:
        kept = self.spool.next_kept(max_rows=self.batch_rows)
        if kept is not None:
            segment, kept_rows, end = kept
            try:  # checked as if read back
                records = [parse_fields(fields) for fields in kept_rows]
            except ValueError:
                pass  # read back below, where the damaged line is set aside
            else:
                return self._deliver(segment, records, [], end)
        batch = self.spool.next_batch(max_rows=self.batch_rows)
        if batch is None:
            return 0
        segment, lines, end = batch
        records = []
        damaged: list[tuple[bytes, Exception]] = []
        pending = segment.pending  # a published staged segment: what its rows' latency field stands for
        for line in lines:
            try:
                rows = spool.decode(line)[1]
                if pending is not None:
                    for fields in rows:
                        if fields[-1] == PENDING_LATENCY:
                            fields[-1] = pending
                records.extend([parse_fields(fields) for fields in rows])
            except (ValueError, UnicodeDecodeError) as exc:
                damaged.append((line, exc))
        return self._deliver(segment, records, damaged, end)

    def _deliver(
        self, segment: spool.Segment, records: list[Row], damaged: list[tuple[bytes, Exception]], end: int
    ) -> int:
        """Write checked records, set damaged lines aside, mark the segment delivered up to end;
        return the rows handled. Called with the delivery lock held."""
        assert self.app is not None
        with self.app.app_context():
            session = db.session()  # the scoped session's own Session, new in each app context
            if self.write_timeout and session.get_bind().dialect.name == "postgresql":
                # In every transaction of this batch, halves included: a statement stalled on a lock
                # (or a slow server) fails after write_timeout, instead of holding the writer, and
                # the stop that waits for it, for as long as the lock is held.
                event.listen(session, "after_begin", self._limit_waits)
            try:
                refused = write_apart(session, records, written=self._written)
            except Exception:
                db.session.rollback()
                raise
        handled = len(records) + len(damaged)
        # A row the database refused goes aside as a line of its own (timed now: its line's time is not kept).
        damaged = [*damaged, *((spool.encode([row], spooled_at=time.time()), why) for row, why in refused)]
        for line, problem in damaged:
            # A damaged line must not hold back every answer after it: keep it aside.
            bad = segment.quarantine(line)
            self.lines_quarantined += 1
            if self.metrics is not None:
                self.metrics.rows_quarantined.inc(spool.line_rows(line))
            log.error(
                "recorder: spool line set aside in %s: %s", bad, (first_line(problem) or type(problem).__name__)[:300]
            )
        self.spool.delivered(segment, end)
        self.publish_backlog()
        if self.database == "degraded":
            log.info("recorder: database writes succeed again")
            # Processes that stopped while it was down (a reload, one worker fewer) left their rows
            # spooled: adopted on the next tick rather than up to adopt_interval later.
            self._next_adopt = 0.0
        self.database = "ok"
        self.last_error = None
        return handled

    def _limit_waits(self, _session: Session, _transaction: Any, connection: Connection) -> None:
        seconds = self.write_timeout
        deadline = getattr(self._flushing, "deadline", None)
        if deadline is not None:  # a flush (a stop's drain): no wait past its deadline
            seconds = min(seconds, max(0.001, deadline - time.monotonic()))
        limit_waits(connection, seconds)

    def _written(self, new: int) -> None:
        """Count predictions newly in the database, as each transaction commits."""
        self.rows_written += new
        if self.metrics is not None:
            self.metrics.rows_written.inc(new)

    def publish_backlog(self) -> None:
        """Set the backlog gauge of GET /metrics to this process's rows waiting now, and bring
        the rows-spooled counter up to date (it is not written on every request, like the gauge)."""
        if self.metrics is None:
            return
        with self._publish_lock:  # requests and the writer both publish: count each row once
            self._backlog_published = time.time()
            try:
                self.metrics.backlog.set(self.spool.backlog_rows)
                spooled = self.rows_spooled
                if spooled > self._spooled_published:
                    self.metrics.rows_spooled.inc(spooled - self._spooled_published)
                    self._spooled_published = spooled
            except Exception:  # a gauge is not worth a request or the writer's thread
                log.exception("recorder: the backlog metrics could not be set")

    def _failed(self, exc: Exception) -> None:
        self.batches_failed += 1
        if self.metrics is not None:
            try:
                self.metrics.write_failures.inc()
            except Exception:  # the writer's thread must outlive its metrics
                log.exception("recorder: the write failures counter could not be set")
        message = f"{type(exc).__name__}: {first_line(exc)}"[:300]
        if self.database != "degraded" or message != self.last_error:
            log.warning("recorder: cannot write to the database, keeping predictions spooled: %s", message)
        self.database = "degraded"
        self.last_error = message

    def flush(self, timeout: float = 10.0) -> bool:
        """Deliver everything spooled now, in this thread; True when nothing is left.

        Retries database errors until the deadline, and waits on PostgreSQL no longer than what
        is left of it (a stop's drain ends on time though a table is locked); used by the stop,
        tests and commands.
        """
        deadline = time.monotonic() + timeout
        self._flushing.deadline = deadline
        try:
            return self._flush_until(deadline)
        finally:
            self._flushing.deadline = None

    def _flush_until(self, deadline: float) -> bool:
        while True:
            try:
                if self.deliver_once(wait=max(0.0, deadline - time.monotonic())) == 0:
                    return self.backlog()[0] == 0
            except WriterBusy:  # the writer's batch still waits on the database: the rest stays spooled
                return False
            except Exception as exc:
                self._failed(exc)
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.1)
            if time.monotonic() >= deadline:
                return self.backlog()[0] == 0

    def replay(self, timeout: float = 60.0) -> tuple[int, bool]:
        """Adopt every orphaned segment and deliver it; (segments adopted, all delivered)."""
        adopted = self.spool.adopt_orphans()
        return adopted, self.flush(timeout)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the writer, draining for at most timeout seconds what this process spooled and what
        stopped processes left; the rest stays spooled."""
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        thread = self._thread if self._pid == os.getpid() else None  # a forked child's is not its own
        if thread is not None and thread.is_alive():
            thread.join(max(0.0, deadline - time.monotonic()))
        stalled = thread is not None and thread.is_alive()
        if stalled:
            log.warning(
                "recorder: the writer still waits on the database after %.1f s; its batch stays spooled", timeout
            )
        drained = False
        if self.app is not None:
            # What processes that stopped before this one left (a reload stops the old workers
            # while the new ones run) goes too: else it would wait for the next start.
            adopted = self.spool.adopt_orphans()
            if adopted:
                log.info("recorder: adopted %d spool segment(s) left by stopped processes", adopted)
            drained = self.flush(max(0.0, deadline - time.monotonic()))
        self.publish_backlog()  # the last requests' rows in the counter, whatever the database did
        rows, _ = self.backlog()
        if rows:
            log.warning(
                "recorder: stopping with %d row(s) spooled; the next start or `recorder replay` delivers them", rows
            )
        else:
            log.info("recorder: stopped, nothing left spooled (%d row(s) written by this process)", self.rows_written)
        if not stalled:  # else the writer may still use its segments: the process's exit closes them
            self.spool.close()
        self._thread = None
        return drained

    def backlog(self) -> tuple[int, float | None]:
        """(rows waiting in this process, age in seconds of the oldest)."""
        rows, oldest = self.spool.backlog()
        return rows, (None if oldest is None else max(0.0, time.time() - oldest))

    def status(self) -> dict[str, Any]:
        """The writer's state for /api/ready and the status command."""
        rows, age = self.backlog()
        return {
            "database": self.database,
            "backlog_rows": rows,
            "oldest_age_seconds": None if age is None else round(age, 3),
            "rows_spooled": self.rows_spooled,
            "rows_written": self.rows_written,
            "batches_failed": self.batches_failed,
            "lines_quarantined": self.lines_quarantined,
            "last_error": self.last_error,
            "writer_running": bool(self._thread and self._thread.is_alive() and self._pid == os.getpid()),
        }


def first_line(exc: Exception) -> str:
    """The first line of an error's message that has text ('' if none): drivers add lines of context."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


def _with_latency(rows: Sequence[Sequence[str]], latency: str) -> list[Sequence[str]]:
    """Staged rows with their pending latency field filled in."""
    return [(*f[:-1], latency) if f[-1] == PENDING_LATENCY else f for f in rows]


class Staged:
    """A big request's records, on local disk but not yet in the spool.

    A request of many passengers is predicted chunk by chunk, and must store
    nothing if any of its rows turns out to be invalid. Each chunk's records are
    encoded as a spool line, held in memory while they are few; once every row
    has passed, :meth:`commit` appends the lines to the spool, and the request
    may answer. Past IN_MEMORY_BYTES they go to a staged file in the spool folder
    instead (:class:`~titanic_web.spool.StagedFile`), which :meth:`commit`
    publishes whole by renaming it: a 100,000-passenger request's 37 MB are then
    written once, not written, read back and written again. :meth:`discard` drops
    them. Use as a context manager.
    """

    #: Staged bytes kept in memory; past this they go to a staged file in the spool folder.
    IN_MEMORY_BYTES = 8 << 20

    def __init__(self, recorder: Recorder, *, arrived: float | None = None) -> None:
        self.recorder = recorder
        self.arrived = arrived  # time.perf_counter() when the request arrived: its latency is measured from it
        self.rows = 0
        #: The first chunk's records while nothing else is staged: a request of one chunk (one
        #: passenger, say) is encoded once, at commit, with its latency already filled in.
        self._held: Sequence[Sequence[str]] | None = None
        #: (line, rows, time, the rows' fields for a line by row) while few
        self._lines: list[tuple[bytes, int, float, Sequence[Sequence[str]] | None]] = []
        self._size = 0
        self._file: spool.StagedFile | None = None

    def add(self, rows: Sequence[Sequence[str]]) -> None:
        """Stage one chunk's records (each a sequence of text fields in :data:`FIELDS` order).

        :raise RecorderError: the spool folder refused the staged file.
        """
        if not rows:
            return
        if self._held is None and not self._lines and self._file is None:
            self._held = rows
            self.rows += len(rows)
            return
        now = time.time()  # add_line stages the held chunk first
        self.add_line(spool.encode(rows, spooled_at=now), rows=len(rows), spooled_at=now, fields=rows)

    def _stage_held(self) -> None:
        """Encode the held first chunk as a staged line (another chunk follows it)."""
        held, self._held = self._held, None
        if held is not None:
            self.rows -= len(held)
            now = time.time()
            self.add_line(spool.encode(held, spooled_at=now), rows=len(held), spooled_at=now, fields=held)

    def add_line(
        self, line: bytes, *, rows: int, spooled_at: float, fields: Sequence[Sequence[str]] | None = None
    ) -> None:
        """Stage one chunk's records already encoded as a spool line (:func:`spool_columns`);
        ``fields``, the rows the line was encoded from, if it is a line by row.

        :raise RecorderError: the spool folder refused the staged file.
        """
        self._stage_held()
        self.rows += rows
        self._size += len(line)
        if self._file is None and self._size <= self.IN_MEMORY_BYTES:
            self._lines.append((line, rows, spooled_at, fields))
            return
        try:
            if self._file is None:
                self._file = self.recorder.spool.stage()
                for held, count, at, _ in self._lines:
                    self._file.write(held, rows=count, spooled_at=at)
                self._lines = []
            self._file.write(line, rows=rows, spooled_at=spooled_at)
        except spool.SpoolError as exc:
            raise self.recorder._refused(exc) from exc

    def commit(self) -> None:
        """Put every staged line in the spool; then the answers may be given.

        Rows staged with :data:`PENDING_LATENCY` get the milliseconds from the
        request's arrival until now (empty, that is NULL, without an arrival time):
        written into lines held in memory, or named by a staged file's segment.

        :raise RecorderError: the spool refused a line. Lines appended before it
            stay spooled (they are stored, though the request fails).
        """
        latency = "" if self.arrived is None else _latency_text((time.perf_counter() - self.arrived) * 1000)
        held, self._held = self._held, None
        if held is not None:  # the only chunk: its one line, encoded now
            filled = _with_latency(held, latency)
            now = time.time()
            self.recorder._append(spool.encode(filled, spooled_at=now), len(filled), now, filled)
            self.discard()
            return
        if self._file is not None:
            try:
                self._file.publish(latency)
            except spool.SpoolError as exc:
                raise self.recorder._refused(exc) from exc
            finally:
                self.discard()  # a file published is no longer the staged one's: nothing is deleted
            self.recorder._spooled(self.rows, time.time())
            return
        pending = latency.encode()
        for line, rows, _, fields in self._lines:
            if fields is not None:  # the same as the line: the pending field filled in
                fields = _with_latency(fields, latency)
            self.recorder._append(line.replace(_PENDING_BYTES, pending), rows, time.time(), fields)
        self.discard()

    def discard(self) -> None:
        """Drop the staged records (not those committed)."""
        self._held = None
        self._lines = []
        if self._file is not None:
            self._file.discard()
            self._file = None

    def __enter__(self) -> Staged:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()
