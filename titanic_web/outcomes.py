"""Outcomes: what really happened to predicted passengers, how right each model version was,
and the served passengers with known outcomes as training rows. Knows nothing of Flask requests."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, scoped_session

from titanic_web import features
from titanic_web.models import FeatureRow, OutcomeRow, PredictionRow
from titanic_web.schema import FieldError, InputError, surrogate_message

ITEM_FIELDS = ("id", "survived")
#: ids looked up in one query (well under every database's limit of bound parameters)
_QUERY_CHUNK = 500
#: The competition's train.csv layout: what the extract of served passengers is written in.
EXTRACT_COLUMNS = ("PassengerId", "Survived", *features.RAW_COLUMNS)

#: A session, or Flask-SQLAlchemy's scoped one (db.session).
DbSession = Session | scoped_session[Any]

log = logging.getLogger(__name__)

UNKNOWN_ID_HINT = (
    "predictions reach the database up to about a second after they are answered; "
    "if this one was just made, send it again shortly"
)


class OutcomeBodyError(ValueError):
    """The body is not a list of outcomes at all (the API answers 400)."""


class OutcomeConflict(Exception):
    """An outcome differs from the one already recorded for its prediction (the API answers 409)."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        super().__init__(f"{len(errors)} conflicting outcome(s)")
        self.errors = list(errors)


@dataclass(frozen=True)
class Outcome:
    """One reported outcome: the prediction's uuid and whether the passenger survived."""

    index: int
    id: uuid.UUID
    survived: int


@dataclass(frozen=True)
class RecordResult:
    """What :func:`record` did: outcomes stored now, and outcomes that were already there."""

    recorded: list[Outcome]
    unchanged: list[Outcome]


def parse(body: Any) -> list[Outcome]:
    """Check a parsed JSON body: one ``{"id", "survived"}`` object or an array of them.

    The same outcome twice in one body counts once.

    :raise OutcomeBodyError: neither an object nor a non-empty array.
    :raise InputError: an item is invalid; every problem is listed, by index.
    """
    if isinstance(body, Mapping):
        items: list[Any] = [body]
    elif isinstance(body, list):
        items = body
    else:
        raise OutcomeBodyError('send a JSON array of {"id": "<prediction uuid>", "survived": 0 or 1} objects')
    if not items:
        raise OutcomeBodyError("the array is empty: send at least one outcome")
    errors: list[FieldError] = []
    outcomes: list[Outcome] = []
    first: dict[uuid.UUID, Outcome] = {}
    for index, item in enumerate(items):
        item_errors, outcome = _check_item(index, item)
        errors.extend(item_errors)
        if outcome is None:
            continue
        earlier = first.get(outcome.id)
        if earlier is None:
            first[outcome.id] = outcome
            outcomes.append(outcome)
        elif earlier.survived != outcome.survived:
            errors.append(
                FieldError(
                    index,
                    "survived",
                    f"contradicts item {earlier.index}, which says {earlier.survived} for prediction {outcome.id}",
                )
            )
    if errors:
        raise InputError(errors)
    return outcomes


def _check_item(index: int, item: Any) -> tuple[list[FieldError], Outcome | None]:
    if not isinstance(item, Mapping):
        return [FieldError(index, None, 'must be an object: {"id": "<prediction uuid>", "survived": 0 or 1}')], None
    errors = [
        FieldError(index, str(name), f"unknown field {str(name)!r}; an outcome has only id and survived")
        for name in item
        if name not in ITEM_FIELDS
    ]
    errors += [FieldError(index, name, "is required") for name in ITEM_FIELDS if name not in item]
    prediction_id: uuid.UUID | None = None
    if "id" in item:
        value = item["id"]
        try:
            if not isinstance(value, str):
                raise ValueError
            prediction_id = uuid.UUID(value)
        except ValueError:
            errors.append(
                FieldError(index, "id", f"must be a prediction's id (a uuid as the API answered it), got {value!r}")
            )
    survived = item.get("survived")
    if "survived" in item and (isinstance(survived, bool) or survived not in (0, 1)):
        errors.append(FieldError(index, "survived", f"must be 0 or 1, got {json.dumps(survived)}"))
    if errors or prediction_id is None:
        return errors, None
    return [], Outcome(index, prediction_id, 1 if survived == 1 else 0)


def record(session: DbSession, outcomes: Sequence[Outcome]) -> RecordResult:
    """Store outcomes of known predictions, all or none; an outcome already recorded changes nothing.

    :raise InputError: an id names no prediction in the database (nothing is stored).
    :raise OutcomeConflict: an outcome differs from the one recorded (nothing is stored).
    """
    try:
        return _record_once(session, outcomes)
    except IntegrityError:
        # Another request stored one of these outcomes (or removed a prediction) between
        # the look-up and the insert: look again; equal outcomes are then "unchanged".
        session.rollback()
        return _record_once(session, outcomes)


def _record_once(session: DbSession, outcomes: Sequence[Outcome]) -> RecordResult:
    ids = [o.id for o in outcomes]
    known: set[uuid.UUID] = set()
    recorded: dict[uuid.UUID, tuple[int, Any]] = {}
    for start in range(0, len(ids), _QUERY_CHUNK):
        chunk = ids[start : start + _QUERY_CHUNK]
        known.update(session.scalars(select(PredictionRow.id).where(PredictionRow.id.in_(chunk))))
        for prediction_id, survived, at in session.execute(
            select(OutcomeRow.prediction_id, OutcomeRow.survived, OutcomeRow.recorded_at).where(
                OutcomeRow.prediction_id.in_(chunk)
            )
        ):
            recorded[prediction_id] = (int(survived), at)
    unknown = [
        FieldError(o.index, "id", f"no prediction with id {o.id}: {UNKNOWN_ID_HINT}")
        for o in outcomes
        if o.id not in known
    ]
    conflicts = [
        FieldError(
            o.index,
            "survived",
            f"prediction {o.id} already has the outcome survived={recorded[o.id][0]} "
            f"(recorded {_when(recorded[o.id][1])}); a recorded outcome is not changed",
        )
        for o in outcomes
        if o.id in recorded and recorded[o.id][0] != o.survived
    ]
    session.rollback()  # end the read: nothing of it is kept
    if unknown:
        raise InputError(sorted(unknown + conflicts, key=lambda e: e.index or 0))
    if conflicts:
        raise OutcomeConflict(conflicts)
    fresh = [o for o in outcomes if o.id not in recorded]
    if fresh:
        session.add_all(OutcomeRow(prediction_id=o.id, survived=o.survived) for o in fresh)
    session.commit()
    return RecordResult(recorded=fresh, unchanged=[o for o in outcomes if o.id in recorded])


def _when(at: Any) -> str:
    return at.isoformat(timespec="seconds") if hasattr(at, "isoformat") else str(at)


def accuracy_by_version(session: DbSession) -> dict[str, dict[str, Any]]:
    """Per model version: how many of its predictions have an outcome, how many were right, the accuracy."""
    correct = func.sum(case((PredictionRow.survived == OutcomeRow.survived, 1), else_=0))
    rows = session.execute(
        select(PredictionRow.model_version, func.count(), correct)
        .join(OutcomeRow, OutcomeRow.prediction_id == PredictionRow.id)
        .group_by(PredictionRow.model_version)
    ).all()
    return {str(version): summary(int(count), int(right or 0)) for version, count, right in rows}


def summary(count: int, correct: int) -> dict[str, Any]:
    """The outcome figures of one version (accuracy None while no outcome is known)."""
    return {"count": count, "correct": correct, "accuracy": round(correct / count, 6) if count else None}


def served_with_outcomes(session: DbSession) -> list[dict[str, Any]]:
    """Every served passenger whose outcome is recorded: its stored raw input plus ``Survived``,
    in the order they were predicted, ties (one request's passengers) by uuid: the same database
    gives the same rows in the same order, so the same training data and version."""
    rows = session.execute(
        select(FeatureRow.raw_input, OutcomeRow.survived)
        .join(OutcomeRow, OutcomeRow.prediction_id == FeatureRow.prediction_id)
        .join(PredictionRow, PredictionRow.id == FeatureRow.prediction_id)
        .order_by(PredictionRow.created_at, PredictionRow.id)
    ).all()
    return [
        {**(raw if isinstance(raw, dict) else json.loads(raw)), "Survived": int(survived)} for raw, survived in rows
    ]


def _key(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """A passenger as the model sees it, with its label: what makes two rows the same example."""
    return (*(_norm(row.get(column)) for column in features.RAW_COLUMNS), int(row["Survived"]))


def _norm(value: Any) -> Any:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return None  # "unknown" is one value whether it came as null, "" or NaN
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return str(value)


def new_examples(served: Iterable[Mapping[str, Any]], known: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The served rows that add an example: not already among the known rows (train.csv), not repeated.

    A passenger predicted twice, or a train.csv passenger sent to the API with its
    known outcome, would otherwise count two or more times in training.
    """
    seen = {_key(row) for row in known}
    out = []
    for row in served:
        key = _key(row)
        if key not in seen:
            seen.add(key)
            out.append(dict(row))
    return out


def write_extract(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Write rows in the competition's train.csv layout (an unknown value is an empty cell), in UTF-8.

    A text with an unpaired surrogate (JSON's "\\ud800" escape, which the API stored before
    it refused it) has no UTF-8 form: it is written with U+FFFD, the replacement character,
    in the surrogate's place, and a warning names it. The row and its outcome still count.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXTRACT_COLUMNS)
    for number, row in enumerate(rows, start=1):
        cells = ["" if row.get(column) is None else row.get(column) for column in EXTRACT_COLUMNS]
        for position, cell in enumerate(cells):
            if cell.__class__ is str and not cell.isascii() and (problem := surrogate_message(cell)) is not None:
                cells[position] = _SURROGATES.sub("\ufffd", cell)
                log.warning(
                    "outcomes: %s, passenger %d (PassengerId %s): %s %s %s (stored before the API refused "
                    "such text); written with U+FFFD in its place",
                    path.name,
                    number,
                    row.get("PassengerId") or "none",
                    EXTRACT_COLUMNS[position],
                    ascii(cell),
                    problem,
                )
        writer.writerow(cells)
    path.write_text(buffer.getvalue(), encoding="utf-8")


_SURROGATES = re.compile("[\ud800-\udfff]")
