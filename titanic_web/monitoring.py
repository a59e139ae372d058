"""Read-only queries behind the dashboard and the history page, on SQLite and PostgreSQL.

Counts, buckets, histograms, percentiles and accuracy are aggregated in SQL, so
a page costs the same with a thousand stored predictions or millions; only the
drift check reads rows (the newest ``max_rows`` of the window, their features
as stored). Times are UTC throughout: SQLite keeps them without an offset, and
a time read back without one is taken as UTC.
"""

from __future__ import annotations

import functools
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Integer, Select, Text, and_, case, cast, func, or_, select
from sqlalchemy.orm import Session

from titanic_web import drift, features
from titanic_web.models import SOURCES, FeatureRow, OutcomeRow, PredictionRow

#: The dashboard's time windows, by the name its ?window= takes; "all" is everything stored.
WINDOWS: dict[str, timedelta | None] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "all": None,
}
DEFAULT_WINDOW = "24h"
#: Bucket width (seconds) of each fixed window's charts: 60, 24, 28 and 30 bars (plus a partial one).
_BUCKET_SECONDS = {"1h": 60, "24h": 3600, "7d": 6 * 3600, "30d": 86400}
#: Widths the "all" window chooses from: the narrowest giving at most MOST_BUCKETS bars.
_NICE_WIDTHS = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400, 365 * 86400)
MOST_BUCKETS = 60
PROBABILITY_BINS = 10
PERCENTILES = (0.5, 0.9, 0.99)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class FilterError(ValueError):
    """A query parameter of the dashboard or the history page has a value that cannot be used."""


def as_utc(moment: datetime) -> datetime:
    """The same instant, timezone-aware in UTC (a naive time, as SQLite returns, is taken as UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


# -- windows -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A time window of the dashboard: [start, end], and the width of its chart buckets."""

    name: str
    start: datetime | None  # None: the "all" window of an empty database
    end: datetime
    bucket_seconds: int

    def conditions(self) -> list[Any]:
        """SQL conditions selecting the predictions made in the window."""
        if self.start is None:
            return [PredictionRow.created_at <= self.end]
        return [PredictionRow.created_at >= self.start, PredictionRow.created_at <= self.end]


def first_prediction_time(session: Session) -> datetime | None:
    """When the oldest stored prediction was made (None: there is none)."""
    first = session.scalar(select(func.min(PredictionRow.created_at)))
    return None if first is None else as_utc(first)


def make_window(name: str, *, now: datetime, session: Session) -> Window:
    """The window called ``name`` ending now.

    :raise FilterError: an unknown window name.
    """
    if name not in WINDOWS:
        raise FilterError(f"unknown window {name!r}: choose one of {', '.join(WINDOWS)}")
    now = as_utc(now)
    span = WINDOWS[name]
    if span is not None:
        return Window(name, now - span, now, _BUCKET_SECONDS[name])
    start = first_prediction_time(session)
    seconds = 0.0 if start is None else (now - start).total_seconds()
    width = next((w for w in _NICE_WIDTHS if seconds / w <= MOST_BUCKETS), _NICE_WIDTHS[-1])
    return Window(name, start, now, width)


# -- aggregates ----------------------------------------------------------------------------------


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _epoch_bucket(session: Session, width: int) -> Any:
    """SQL for the number of the ``width``-second bucket (since 1970) a prediction falls in."""
    if _dialect(session) == "sqlite":
        # SQLite keeps UTC text; strftime('%s') reads it as UTC; integer division floors positives.
        return cast(func.strftime("%s", PredictionRow.created_at), Integer) // width
    return func.floor(func.extract("epoch", PredictionRow.created_at) / width)


@dataclass(frozen=True)
class Bucket:
    """The predictions made in one time bucket."""

    start: datetime
    predictions: int
    survived: int

    @property
    def survival_rate(self) -> float | None:
        """Share predicted to survive; None for an empty bucket."""
        return self.survived / self.predictions if self.predictions else None


@dataclass(frozen=True)
class Summary:
    """The window's totals."""

    predictions: int
    survived: int
    with_latency: int

    @property
    def survival_rate(self) -> float | None:
        """Share predicted to survive; None without predictions."""
        return self.survived / self.predictions if self.predictions else None


def summary(session: Session, window: Window) -> Summary:
    """How many predictions the window holds, how many survive, how many carry a latency."""
    total, survived, timed = session.execute(
        select(func.count(), func.sum(PredictionRow.survived), func.count(PredictionRow.latency_ms)).where(
            *window.conditions()
        )
    ).one()
    return Summary(int(total or 0), int(survived or 0), int(timed or 0))


def time_series(session: Session, window: Window) -> list[Bucket]:
    """Predictions and survivals per bucket, every bucket of the window (empty ones as zeros)."""
    if window.start is None:
        return []
    width = window.bucket_seconds
    bucket = _epoch_bucket(session, width).label("bucket")
    found = {
        int(number): (int(count), int(survived or 0))
        for number, count, survived in session.execute(
            select(bucket, func.count(), func.sum(PredictionRow.survived)).where(*window.conditions()).group_by(bucket)
        )
    }
    first = math.floor((window.start - EPOCH).total_seconds() / width)
    last = math.floor((window.end - EPOCH).total_seconds() / width)
    return [
        Bucket(EPOCH + timedelta(seconds=number * width), *found.get(number, (0, 0)))
        for number in range(first, last + 1)
    ]


def probability_histogram(session: Session, window: Window, *, bins: int = PROBABILITY_BINS) -> list[int]:
    """How many predictions fall in each of ``bins`` equal probability ranges; 1.0 counts in the last."""
    p = PredictionRow.probability
    # A CASE ladder rather than floor(): SQLite has no floor() in every build.
    number = case(*[(p < (i + 1) / bins, i) for i in range(bins - 1)], else_=bins - 1).label("bin")
    counts = [0] * bins
    for index, count in session.execute(select(number, func.count()).where(*window.conditions()).group_by(number)):
        counts[int(index)] = int(count)
    return counts


@dataclass(frozen=True)
class Latency:
    """Server latency percentiles in milliseconds, over the predictions that recorded one."""

    count: int
    percentiles: Mapping[float, float]


def latency_percentiles(session: Session, window: Window, *, quantiles: Sequence[float] = PERCENTILES) -> Latency:
    """Continuous percentiles (linear between ranks, as PostgreSQL's percentile_cont) of latency_ms.

    Predictions without a latency are left out; with none at all the mapping is empty.
    """
    column = PredictionRow.latency_ms
    conditions = [*window.conditions(), column.is_not(None)]
    count = int(session.scalar(select(func.count(column)).where(*conditions)) or 0)
    if count == 0:
        return Latency(0, {})
    if _dialect(session) == "postgresql":
        values = session.execute(
            select(*[func.percentile_cont(q).within_group(column) for q in quantiles]).where(*conditions)
        ).one()
        return Latency(count, {q: float(v) for q, v in zip(quantiles, values, strict=True)})
    # Elsewhere: the two ranks around each percentile, read through the sorted column.
    result = {}
    for q in quantiles:
        position = q * (count - 1)
        low = math.floor(position)
        pair = [
            float(v)
            for v in session.scalars(select(column).where(*conditions).order_by(column).limit(2).offset(low))
            if v is not None
        ]
        value = pair[0]
        if len(pair) > 1 and position > low:
            value += (position - low) * (pair[1] - pair[0])
        result[q] = value
    return Latency(count, result)


@dataclass(frozen=True)
class VersionAccuracy:
    """How often one model version was right, on the predictions whose outcome was recorded."""

    model_version: str
    outcomes: int
    correct: int

    @property
    def accuracy(self) -> float:
        """Share of recorded outcomes the model predicted."""
        return self.correct / self.outcomes


def accuracy_by_version(session: Session, window: Window) -> list[VersionAccuracy]:
    """Accuracy per model version over the window's predictions that have a recorded outcome."""
    right = func.sum(case((PredictionRow.survived == OutcomeRow.survived, 1), else_=0))
    rows = session.execute(
        select(PredictionRow.model_version, func.count(), right)
        .join(OutcomeRow, OutcomeRow.prediction_id == PredictionRow.id)
        .where(*window.conditions())
        .group_by(PredictionRow.model_version)
        .order_by(func.count().desc(), PredictionRow.model_version)
    )
    return [VersionAccuracy(version, int(n), int(correct or 0)) for version, n, correct in rows]


def served_features(session: Session, window: Window, *, limit: int) -> dict[str, list[Any]]:
    """The features of the window's newest ``limit`` predictions, by feature name (None where missing)."""
    newest = (
        select(cast(FeatureRow.features, Text).label("features"))
        .join(PredictionRow, PredictionRow.id == FeatureRow.prediction_id)
        .where(*window.conditions())
        .order_by(PredictionRow.created_at.desc())
        .limit(limit)
    )
    # The database joins the stored JSON texts into one (order does not matter to drift), and
    # Python parses that once: tens of thousands of rows never pass one at a time.
    dialect = _dialect(session)
    if dialect in ("sqlite", "postgresql"):
        column = newest.subquery().c.features
        joined = func.group_concat(column, ",") if dialect == "sqlite" else func.string_agg(column, ",")
        text = session.scalar(select(joined)) or ""
    else:
        text = ",".join(session.scalars(newest))
    records: list[dict[str, Any]] = json.loads(f"[{text}]")
    return {name: [record.get(name) for record in records] for name in features.FEATURES}


# -- the training data as the drift reference ----------------------------------------------------


class ReferenceDataError(Exception):
    """The training data cannot serve as the drift reference (missing or unreadable)."""


def training_reference(path: Path) -> drift.Reference:
    """The training data's features binned for drift, computed once per process (per file version).

    :raise ReferenceDataError: the file is missing or not competition training data.
    """
    try:
        stat = path.stat()
    except OSError as exc:
        raise ReferenceDataError(f"training data not found: {path} ({exc.strerror})") from None
    return _reference(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _reference(path: str, _mtime_ns: int, _size: int) -> drift.Reference:
    # The model's own feature code, run as training runs it (fit_transform on train.csv).
    from titanic_web.training import TrainingError, load_training_data

    try:
        raw, labels = load_training_data(Path(path))
    except TrainingError as exc:
        raise ReferenceDataError(str(exc)) from None
    frame = features.PassengerFeatures().fit_transform(raw, labels)
    columns = {name: frame[name].tolist() for name in features.FEATURES}
    return drift.Reference.from_columns(
        columns, numeric=features.NUMERIC_FEATURES, categorical=features.CATEGORICAL_FEATURES
    )


@dataclass(frozen=True)
class DriftReport:
    """The drift of every feature in a window, or why it could not be measured."""

    rows: int  # served rows compared (at most max_rows)
    max_rows: int
    min_rows: int
    features: list[drift.FeatureDrift] = field(default_factory=list)
    error: str | None = None

    @property
    def drifted(self) -> list[str]:
        """The features in the drift band."""
        return [f.feature for f in self.features if f.band == "drift"]


def drift_report(session: Session, window: Window, *, train_data: Path, min_rows: int, max_rows: int) -> DriftReport:
    """Compare the window's newest ``max_rows`` served features with the training data."""
    try:
        reference = training_reference(train_data)
    except ReferenceDataError as exc:
        return DriftReport(0, max_rows, min_rows, error=str(exc))
    columns = served_features(session, window, limit=max_rows)
    rows = len(columns[features.FEATURES[0]])
    return DriftReport(rows, max_rows, min_rows, reference.compare(columns, min_rows=min_rows))


# -- history -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """Which stored predictions to list or export; None means any."""

    source: str | None = None
    model_version: str | None = None
    survived: int | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive

    def conditions(self) -> list[Any]:
        """SQL conditions on predictions."""
        out: list[Any] = []
        if self.source is not None:
            out.append(PredictionRow.source == self.source)
        if self.model_version is not None:
            out.append(PredictionRow.model_version == self.model_version)
        if self.survived is not None:
            out.append(PredictionRow.survived == self.survived)
        if self.since is not None:
            out.append(PredictionRow.created_at >= as_utc(self.since))
        if self.until is not None:
            out.append(PredictionRow.created_at < as_utc(self.until))
        return out


VERDICTS = {"survived": 1, "died": 0}


def _day(text: str, name: str) -> date:
    """A date as YYYY-MM-DD, the one layout the page's date inputs show (``fromisoformat``
    also reads 20261206 and 2026-W49-7, which the inputs would show blank and drop)."""
    try:
        if len(text) != 10 or text[4] != "-" or text[7] != "-":
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise FilterError(f"{name} must be a date as YYYY-MM-DD, got {text!r}") from None


def filters_from_args(args: Mapping[str, str]) -> Filters:
    """The history page's filters from its query string: source, model, verdict, from and to (dates, UTC).

    ``to`` includes its whole day. Empty values mean "any".

    :raise FilterError: a value that is not one of the choices, not printable or not a usable date,
        naming the parameter.
    """
    source = args.get("source") or None
    if source is not None and source not in SOURCES:
        raise FilterError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    verdict = args.get("verdict") or None
    if verdict is not None and verdict not in VERDICTS:
        raise FilterError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
    model_version = args.get("model") or None
    if model_version is not None and len(model_version) > 64:
        raise FilterError("model must be a model version of at most 64 characters")
    if model_version is not None and not model_version.isprintable():
        # No model version has an unprintable character, and PostgreSQL's text cannot hold a NUL.
        raise FilterError(f"model must be printable text, got {model_version!r}")
    since = until = None
    if args.get("from"):
        since = datetime.combine(_day(args["from"], "from"), time(), UTC)
    if args.get("to"):
        last = _day(args["to"], "to")
        if last == date.max:  # its whole day would end after the last date there is
            raise FilterError(f"to must be a date before {date.max.isoformat()}, got {args['to']!r}")
        until = datetime.combine(last + timedelta(days=1), time(), UTC)
    if since is not None and until is not None and until <= since:
        raise FilterError(f"from ({args['from']}) must not be after to ({args['to']})")
    return Filters(source, model_version, None if verdict is None else VERDICTS[verdict], since, until)


@dataclass(frozen=True)
class HistoryRow:
    """One stored prediction as the history page lists it."""

    id: uuid.UUID
    created_at: datetime
    passenger_id: int | None
    name: str | None
    survived: int
    probability: float
    model_version: str
    source: str
    latency_ms: float | None
    outcome: int | None

    @property
    def cursor(self) -> str:
        """This row's place in the newest-first order, for the page links."""
        delta = self.created_at - EPOCH
        micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
        return f"{micros}-{self.id.hex}"


@dataclass(frozen=True)
class HistoryPage:
    """A page of predictions, newest first, with the cursors of the pages around it."""

    rows: list[HistoryRow]
    total: int  # every prediction matching the filters
    newer: str | None  # ?before= for the page of newer rows (None: this is the newest)
    older: str | None  # ?after= for the page of older rows (None: this is the oldest)


def parse_cursor(text: str, name: str) -> tuple[datetime, uuid.UUID]:
    """A page cursor (microseconds since 1970, a dash, the uuid's hex) as a time and a uuid.

    :raise FilterError: not a cursor this page made.
    """
    micros, _, hex_id = text.partition("-")
    try:
        return EPOCH + timedelta(microseconds=int(micros)), uuid.UUID(hex=hex_id)
    except (ValueError, OverflowError):
        raise FilterError(f"{name} is not a page position this site made: {text[:80]!r}") from None


def _history_select(filters: Filters) -> Select[Any]:
    return (
        select(
            PredictionRow.id,
            PredictionRow.created_at,
            PredictionRow.passenger_id,
            FeatureRow.raw_input,
            PredictionRow.survived,
            PredictionRow.probability,
            PredictionRow.model_version,
            PredictionRow.source,
            PredictionRow.latency_ms,
            OutcomeRow.survived,
        )
        .outerjoin(FeatureRow, FeatureRow.prediction_id == PredictionRow.id)
        .outerjoin(OutcomeRow, OutcomeRow.prediction_id == PredictionRow.id)
        .where(*filters.conditions())
    )


def history_page(
    session: Session, filters: Filters, *, size: int, after: str | None = None, before: str | None = None
) -> HistoryPage:
    """A page of ``size`` predictions, newest first: the newest, those older than ``after``, or
    those newer than ``before`` (cursors from an earlier page). Keyset paging: every page
    costs the same however deep it is.

    :raise FilterError: a cursor this page did not make.
    """
    created, pid = PredictionRow.created_at, PredictionRow.id
    statement = _history_select(filters)
    if after is not None:
        at, key = parse_cursor(after, "after")
        statement = statement.where(or_(created < at, and_(created == at, pid < key))).order_by(
            created.desc(), pid.desc()
        )
    elif before is not None:
        at, key = parse_cursor(before, "before")
        statement = statement.where(or_(created > at, and_(created == at, pid > key))).order_by(
            created.asc(), pid.asc()
        )
    else:
        statement = statement.order_by(created.desc(), pid.desc())
    found = list(session.execute(statement.limit(size + 1)).all())
    more = len(found) > size
    found = found[:size]
    if before is not None:
        found.reverse()  # read oldest-first to find the newer page; shown newest first
    rows = [
        HistoryRow(
            id=r[0],
            created_at=as_utc(r[1]),
            passenger_id=r[2],
            name=(r[3] or {}).get("Name"),
            survived=r[4],
            probability=r[5],
            model_version=r[6],
            source=r[7],
            latency_ms=r[8],
            outcome=r[9],
        )
        for r in found
    ]
    total = int(session.scalar(select(func.count()).select_from(PredictionRow).where(*filters.conditions())) or 0)
    if not rows:
        return HistoryPage(rows, total, None, None)
    newer: str | None
    older: str | None
    if before is not None:
        newer, older = (rows[0].cursor if more else None), rows[-1].cursor
    else:
        newer, older = (rows[0].cursor if after is not None else None), (rows[-1].cursor if more else None)
    return HistoryPage(rows, total, newer, older)


def model_versions(session: Session) -> list[str]:
    """Every model version that has stored predictions, for the history filter."""
    return list(session.scalars(select(PredictionRow.model_version).distinct().order_by(PredictionRow.model_version)))


@dataclass(frozen=True)
class Detail:
    """Everything stored about one prediction."""

    prediction: PredictionRow
    features: FeatureRow | None
    outcome: OutcomeRow | None


def prediction_detail(session: Session, prediction_id: uuid.UUID) -> Detail | None:
    """The prediction, its stored features and raw input, and its outcome; None if unknown."""
    prediction = session.get(PredictionRow, prediction_id)
    if prediction is None:
        return None
    return Detail(prediction, session.get(FeatureRow, prediction_id), session.get(OutcomeRow, prediction_id))
