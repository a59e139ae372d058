"""Tables: every prediction, and the features the model saw for it, joined by its uuid."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Connection, DateTime, Float, ForeignKey, Integer, SmallInteger, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from titanic_web.extensions import Model, db

SOURCES = ("api", "form", "batch")


def now_utc() -> datetime:
    """Current time, timezone-aware (a callable default: evaluated per row)."""
    return datetime.now(UTC)


class PredictionRow(Model):
    """One passenger's prediction, as answered."""

    __tablename__ = "predictions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    passenger_id: Mapped[int | None] = mapped_column(Integer)
    survived: Mapped[int] = mapped_column(SmallInteger)
    probability: Mapped[float] = mapped_column(Float)
    model_version: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc, index=True)
    # The request that asked for it (also in the X-Request-ID header and the request's log line).
    request_id: Mapped[str | None] = mapped_column(String(64))
    # Server time from the request's arrival until its answer was ready, in milliseconds.
    latency_ms: Mapped[float | None] = mapped_column(Float)


class FeatureRow(Model):
    """The engineered features and the raw input behind one prediction."""

    __tablename__ = "feature_store"

    prediction_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("predictions.id", ondelete="CASCADE"), primary_key=True
    )
    features: Mapped[dict[str, Any]] = mapped_column(JSON)
    raw_input: Mapped[dict[str, Any]] = mapped_column(JSON)
    model_version: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)


class OutcomeRow(Model):
    """What really happened to a predicted passenger, reported later (POST /api/outcomes)."""

    __tablename__ = "outcomes"

    prediction_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("predictions.id", ondelete="CASCADE"), primary_key=True
    )
    survived: Mapped[int] = mapped_column(SmallInteger)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)


def check_tables(*, timeout: float | None = None) -> None:
    """Touch both tables, not just the connection: a missing schema is not a working database.

    ``timeout``: on PostgreSQL, the seconds each read may wait (for a lock another session
    holds on a table, say) before it fails; on SQLite, SQLITE_BUSY_TIMEOUT_MS bounds the wait.

    :raise sqlalchemy.exc.SQLAlchemyError: the database or a table cannot be read.
    """
    if timeout and db.session.get_bind().dialect.name == "postgresql":
        limit_waits(db.session.connection(), timeout)
    db.session.execute(db.select(PredictionRow.id).limit(1))
    db.session.execute(db.select(FeatureRow.prediction_id).limit(1))


def limit_waits(connection: Connection, seconds: float) -> None:
    """On PostgreSQL, make the current transaction's statements, and their waits for locks,
    fail after ``seconds`` (``SET LOCAL``: the pooled connection is left as it was).

    The lock wait's limit is a little shorter, so that a statement stalled on another session's
    lock fails as "canceling statement due to lock timeout", which says what happened, rather
    than as a statement timeout.
    """
    statement = max(2, round(seconds * 1000))
    connection.exec_driver_sql(
        "SELECT set_config('statement_timeout', %(statement)s, true), set_config('lock_timeout', %(lock)s, true)",
        {"statement": str(statement), "lock": str(max(1, statement * 9 // 10))},
    )
