"""Stored predictions made to order for the monitoring tests, and a reader of the pages' HTML.

Rows go straight into the tables (SQLAlchemy Core, as the recorder's portable path
does), so a test chooses every time, answer, latency and outcome, and works out
the figures the pages must show in plain Python, independently of their SQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from html.parser import HTMLParser
from typing import Any

from flask import Flask
from sqlalchemy import insert

from tests.conftest import TEST_CSV, TRAIN_CSV
from tests.integration.helpers import kaggle_rows
from titanic_web.extensions import db
from titanic_web.models import SOURCES, FeatureRow, OutcomeRow, PredictionRow, now_utc
from titanic_web.predictor import Predictor


@dataclass
class Stored:
    """One prediction as a test stores it."""

    created_at: datetime
    survived: int
    probability: float
    features: dict[str, Any]
    raw_input: dict[str, Any]
    source: str = "api"
    model_version: str = "v1"
    latency_ms: float | None = None
    outcome: int | None = None
    passenger_id: int | None = None
    id: uuid.UUID = field(default_factory=uuid.uuid4)


def store(app: Flask, rows: Sequence[Stored], *, chunk: int = 2000) -> None:
    """Insert the rows into predictions, feature_store and (where given) outcomes."""
    with app.app_context():
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            db.session.execute(
                insert(PredictionRow),
                [
                    {
                        "id": r.id,
                        "passenger_id": r.passenger_id,
                        "survived": r.survived,
                        "probability": r.probability,
                        "model_version": r.model_version,
                        "source": r.source,
                        "created_at": r.created_at,
                        "latency_ms": r.latency_ms,
                    }
                    for r in part
                ],
            )
            db.session.execute(
                insert(FeatureRow),
                [
                    {
                        "prediction_id": r.id,
                        "features": r.features,
                        "raw_input": r.raw_input,
                        "model_version": r.model_version,
                        "created_at": r.created_at,
                    }
                    for r in part
                ],
            )
            outcomes = [{"prediction_id": r.id, "survived": r.outcome} for r in part if r.outcome is not None]
            if outcomes:
                db.session.execute(insert(OutcomeRow), outcomes)
            db.session.commit()


def passengers(kind: str = "test") -> list[dict[str, Any]]:
    """The passengers of test.csv (or train.csv) as validated JSON-like input."""
    return kaggle_rows(TEST_CSV if kind == "test" else TRAIN_CSV)


def traffic(
    predictor: Predictor,
    count: int,
    *,
    now: datetime | None = None,
    spacing: timedelta = timedelta(seconds=7),
    pool: Sequence[dict[str, Any]] | None = None,
) -> list[Stored]:
    """``count`` predictions of real passengers (test.csv by default), one every ``spacing`` back from now.

    The answers are the model's own; sources, latencies and outcomes follow fixed rules
    (every 4th has no latency, every 5th has an outcome), so tests can count them.
    """
    now = now or now_utc()
    pool = list(pool or passengers())
    answers = predictor.predict(pool)
    rows = []
    for i in range(count):
        k = i % len(pool)
        rows.append(
            Stored(
                created_at=now - spacing * (i + 1),
                survived=answers[k].survived,
                probability=answers[k].probability,
                features=answers[k].features,
                raw_input=pool[k],
                source=SOURCES[i % 3],
                latency_ms=None if i % 4 == 0 else float(1 + i % 37),
                outcome=(i // 5) % 2 if i % 5 == 0 else None,
                passenger_id=pool[k].get("PassengerId"),
            )
        )
    return rows


class Page(HTMLParser):
    """The text of elements by id, and the cells of tables by id, from a rendered page."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self._open: list[tuple[str, str | None]] = []  # (tag, id) of open elements
        self._texts: dict[str, list[str]] = {}
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        element_id = attributes.get("id")
        if tag in ("br", "img", "input", "meta", "link", "rect", "line", "circle", "polyline"):
            return  # void or self-closed: never holds text
        self._open.append((tag, element_id))
        if element_id:
            self._texts[element_id] = []
        if tag == "table" and element_id:
            self._table = element_id
            self.tables[element_id] = []
        elif tag == "tr" and self._table:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        while self._open:
            open_tag, element_id = self._open.pop()
            if element_id:
                self.by_id[element_id] = " ".join(" ".join(self._texts.pop(element_id)).split())
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for texts in self._texts.values():
            texts.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def table(self, table_id: str) -> list[list[str]]:
        """The rows of a table (header row included), each a list of cell texts."""
        assert table_id in self.tables, f"no table #{table_id} on the page"
        return self.tables[table_id]

    def text(self, element_id: str) -> str:
        """The whitespace-normalised text of the element with this id."""
        assert element_id in self.by_id, f"no element #{element_id} on the page"
        return self.by_id[element_id]


def rows_of(rows: Iterable[Stored], start: datetime, end: datetime) -> list[Stored]:
    """The rows made in [start, end]."""
    return [r for r in rows if start <= r.created_at <= end]
