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

import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from titanic_web import spool
from titanic_web.extensions import db
from titanic_web.models import FeatureRow, PredictionRow, now_utc

log = logging.getLogger(__name__)


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

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "passenger_id": self.passenger_id,
            "survived": self.survived,
            "probability": self.probability,
            "model_version": self.model_version,
            "source": self.source,
            "features": self.features,
            "raw_input": self.raw_input,
            "created_at": self.created_at.isoformat(),
        }


def _insert_ignoring_duplicates(session: Session, table: Any, key: str, rows: list[dict[str, Any]]) -> int:
    """INSERT rows, skipping any whose key is already stored (ON CONFLICT DO NOTHING).

    Returns how many rows were new.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:  # no portable upsert: look the keys up first (the unique key still guards races)
        column = getattr(table, key)
        existing: set[Any] = set()
        keys = [r[key] for r in rows]
        for start in range(0, len(keys), 500):
            existing.update(session.scalars(select(column).where(column.in_(keys[start : start + 500]))))
        rows = [r for r in rows if r[key] not in existing]
        if rows:
            session.execute(insert(table), rows)
        return len(rows)
    column = getattr(table, key)
    inserted = session.execute(
        dialect_insert(table).on_conflict_do_nothing(index_elements=[key]).returning(column), rows
    ).all()
    return len(inserted)


def write_batch(session: Session, records: Sequence[dict[str, Any]]) -> int:
    """Insert spooled records into both tables, skipping uuids already there; commit.

    Returns how many predictions were new. Safe to call again with the same
    records: every row is keyed by the prediction uuid.
    """
    by_id: dict[uuid.UUID, dict[str, Any]] = {}
    for r in records:
        by_id.setdefault(uuid.UUID(r["id"]), r)  # a uuid twice in one batch: keep one
    new = 0
    if by_id:
        new = _insert_ignoring_duplicates(
            session,
            PredictionRow,
            "id",
            [
                {
                    "id": i,
                    "passenger_id": r["passenger_id"],
                    "survived": r["survived"],
                    "probability": r["probability"],
                    "model_version": r["model_version"],
                    "source": r["source"],
                    "created_at": datetime.fromisoformat(r["created_at"]),
                }
                for i, r in by_id.items()
            ],
        )
        _insert_ignoring_duplicates(
            session,
            FeatureRow,
            "prediction_id",
            [
                {
                    "prediction_id": i,
                    "features": r["features"],
                    "raw_input": r["raw_input"],
                    "model_version": r["model_version"],
                    "created_at": datetime.fromisoformat(r["created_at"]),
                }
                for i, r in by_id.items()
            ],
        )
    session.commit()
    return new


class Recorder:
    """Spools records on the request path; a per-process writer thread delivers them."""

    def __init__(
        self,
        spool_dir: Path,
        *,
        batch_rows: int = 1000,
        flush_interval: float = 0.2,
        retry_max: float = 30.0,
        adopt_interval: float = 30.0,
        fsync: bool = False,
    ) -> None:
        self.spool = spool.Spool(spool_dir, fsync=fsync)
        self.batch_rows = batch_rows
        self.flush_interval = flush_interval
        self.retry_max = retry_max
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
        line = spool.encode([r.to_json() for r in records], spooled_at=now)
        try:
            self.spool.append(line, rows=len(records), spooled_at=now)
        except spool.SpoolError as exc:
            log.error("%s", exc)
            raise RecorderError(str(exc)) from exc
        self.rows_spooled += len(records)
        self.start()
        # A transaction per request would cost more than the request: the writer
        # delivers on its RECORDER_FLUSH_SECONDS tick, or now if a batch is full.
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
            try:
                if time.monotonic() >= self._next_adopt:
                    adopted = self.spool.adopt_orphans()
                    if adopted:
                        log.info("recorder: adopted %d spool segment(s) left by stopped processes", adopted)
                    self._next_adopt = time.monotonic() + self.adopt_interval
                rows = self.deliver_once()
            except Exception as exc:  # keep running whatever the database does
                self._failed(exc)
                delay = min(self.retry_max, max(0.25, delay * 2))
                self._stopping.wait(delay)
                continue
            delay = 0.0
            if rows < self.batch_rows:  # caught up: wait for the tick or a full batch
                self._wake.wait(self.flush_interval)
                self._wake.clear()

    def deliver_once(self) -> int:
        """Deliver one batch from the spool; return the rows it held (0: nothing waiting)."""
        assert self.app is not None
        with self._deliver_lock:
            batch = self.spool.next_batch(max_rows=self.batch_rows)
            if batch is None:
                return 0
            segment, lines, end = batch
            records: list[dict[str, Any]] = []
            damaged: list[tuple[bytes, Exception]] = []
            for line in lines:
                try:
                    records.extend(spool.decode(line)[1])
                except (ValueError, KeyError, TypeError) as exc:
                    damaged.append((line, exc))
            with self.app.app_context():
                try:
                    new = write_batch(db.session, records)
                except Exception:
                    db.session.rollback()
                    raise
            for line, exc in damaged:
                # A damaged line must not hold back every answer after it: keep it aside.
                bad = segment.quarantine(line)
                self.lines_quarantined += 1
                log.error("recorder: undecodable spool line (%s) moved to %s", exc, bad)
            self.spool.delivered(segment, end)
        self.rows_written += new
        if self.database == "degraded":
            log.info("recorder: database writes succeed again")
        self.database = "ok"
        self.last_error = None
        return len(records) + len(damaged)

    def _failed(self, exc: Exception) -> None:
        self.batches_failed += 1
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        if self.database != "degraded" or message != self.last_error:
            log.warning("recorder: cannot write to the database, keeping predictions spooled: %s", message)
        self.database = "degraded"
        self.last_error = message

    def flush(self, timeout: float = 10.0) -> bool:
        """Deliver everything spooled now, in this thread; True when nothing is left.

        Retries database errors until the deadline; used by tests and commands.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.deliver_once() == 0:
                    return self.backlog()[0] == 0
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
        """Stop the writer, draining for at most timeout seconds; the rest stays spooled."""
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and self._pid == os.getpid():
            thread.join(max(0.0, deadline - time.monotonic()))
        drained = self.flush(max(0.0, deadline - time.monotonic())) if self.app is not None else False
        rows, _ = self.backlog()
        if rows:
            log.warning("recorder: stopping with %d row(s) spooled; the next start or `recorder replay` delivers them", rows)
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
