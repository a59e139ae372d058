"""The trained model behaves as a model of this disaster should: invariances and directions on real rows."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.conftest import PASSENGER, TEST_CSV, TRAIN_CSV
from titanic_web import csvio, features
from titanic_web.predictor import Predictor


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> Predictor:
    return Predictor.from_dir(model_dir)


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    """Every passenger of train.csv (labels dropped) and test.csv, as the API would check them."""
    train = pd.read_csv(TRAIN_CSV).drop(columns="Survived").to_csv(index=False)
    out = csvio.read_passengers(train, max_rows=sys.maxsize)
    return out + csvio.read_passengers(csvio.decode(TEST_CSV.read_bytes()), max_rows=sys.maxsize)


def test_passenger_id_never_changes_a_prediction(predictor: Predictor, rows: list[dict[str, Any]]) -> None:
    before = [p.probability for p in predictor.predict(rows)]
    renumbered = [{**row, "PassengerId": 100_000 + i} for i, row in enumerate(rows)]
    without = [{k: v for k, v in row.items() if k != "PassengerId"} for row in rows]
    assert [p.probability for p in predictor.predict(renumbered)] == before
    assert [p.probability for p in predictor.predict(without)] == before


def _belongs_to_no_known_group(predictor: Predictor, row: dict[str, Any]) -> bool:
    known = predictor.compiled.known if predictor.compiled is not None else predictor.pipeline[0].known
    ticket = (row.get("Ticket") or "").strip() or None
    keys = features.group_keys(ticket, row.get("Name"), row.get("Pclass"), row.get("Fare"))
    return not any(key in known.groups for key in keys) and known.ticket_counts.get(ticket or "", 0) == 0


def test_the_name_outside_the_title_never_changes_a_prediction_for_a_passenger_in_no_known_group(
    predictor: Predictor, rows: list[dict[str, Any]]
) -> None:
    """Renaming (surname and given names) changes nothing when neither name joins a known group."""
    alone = [row for row in rows[891:] if row.get("Name") and _belongs_to_no_known_group(predictor, row)]
    assert len(alone) > 100, "test.csv has many passengers travelling without a known group"
    renamed = []
    for i, row in enumerate(alone):
        title = features.title_of(row["Name"])
        written = {"Rare": "Dr", "Unknown": ""}.get(title, title)
        new = {**row, "Name": f"Zz{i}q, {written}. Otherfirst Othermiddle" if written else f"Zz{i}q Otherfirst"}
        assert features.title_of(new["Name"]) == title
        assert _belongs_to_no_known_group(predictor, new)
        renamed.append(new)
    assert [p.probability for p in predictor.predict(renamed)] == [p.probability for p in predictor.predict(alone)]


def test_the_name_does_matter_when_it_joins_a_known_group(predictor: Predictor) -> None:
    """The invariance above is not vacuous: a surname with a known group's class and fare moves the answer."""
    known = predictor.compiled.known if predictor.compiled is not None else predictor.pipeline[0].known
    died = next(key for key, (n, lived) in known.groups.items() if key.startswith("F ") and n >= 2 and lived == 0)
    surname, pclass, fare = died[2:].rsplit(" ", 2)  # "F <surname> <class> <fare>"
    boy = {**PASSENGER, "Pclass": int(pclass), "Fare": float(fare), "Sex": "male", "Age": 4.0, "Ticket": "NEW 1"}
    stranger = {**boy, "Name": "Zzq, Master. Tom"}
    kin = {**boy, "Name": f"{surname.title()}, Master. Tom"}
    p_stranger, p_kin = (p.probability for p in predictor.predict([stranger, kin]))
    assert p_kin < p_stranger


@pytest.mark.parametrize("pclass", [1, 2, 3])
def test_a_woman_is_likelier_to_survive_than_an_otherwise_identical_man(predictor: Predictor, pclass: int) -> None:
    man = {**PASSENGER, "Pclass": pclass, "Sex": "male", "Name": "Zzq, Mr. James", "Ticket": "NEW 2"}
    woman = {**man, "Sex": "female", "Name": "Zzq, Mrs. James"}
    p_man, p_woman = (p.probability for p in predictor.predict([man, woman]))
    assert p_woman > p_man


def test_a_first_class_woman_is_likelier_to_survive_than_an_otherwise_identical_third_class_man(
    predictor: Predictor,
) -> None:
    man = {**PASSENGER, "Pclass": 3, "Sex": "male", "Name": "Zzq, Mr. James", "Ticket": "NEW 3"}
    woman = {**man, "Pclass": 1, "Sex": "female", "Name": "Zzq, Mrs. James"}
    p_man, p_woman = (p.probability for p in predictor.predict([man, woman]))
    assert p_woman > p_man
