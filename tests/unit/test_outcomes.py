"""Outcomes as pure code: checking a body, choosing the served rows worth training on, the extract."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from titanic_web import outcomes
from titanic_web.config import PROJECT_ROOT
from titanic_web.schema import InputError
from titanic_web.training import load_training_data

ID = "6f1c2b1e-8c1a-4d2e-9f3a-0b1c2d3e4f50"
OTHER = "0a9b8c7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d"


def test_a_list_of_outcomes_is_parsed_in_order() -> None:
    parsed = outcomes.parse([{"id": ID, "survived": 1}, {"id": OTHER.upper(), "survived": 0}])

    assert [(o.index, o.id, o.survived) for o in parsed] == [(0, uuid.UUID(ID), 1), (1, uuid.UUID(OTHER), 0)]


def test_one_object_is_one_outcome() -> None:
    assert [(o.id, o.survived) for o in outcomes.parse({"id": ID, "survived": 0})] == [(uuid.UUID(ID), 0)]


def test_the_same_outcome_twice_in_one_body_counts_once() -> None:
    parsed = outcomes.parse([{"id": ID, "survived": 1}, {"id": ID, "survived": 1}])

    assert [(o.index, o.survived) for o in parsed] == [(0, 1)]


def test_contradicting_outcomes_in_one_body_are_refused() -> None:
    with pytest.raises(InputError) as raised:
        outcomes.parse([{"id": ID, "survived": 1}, {"id": OTHER, "survived": 0}, {"id": ID, "survived": 0}])

    (error,) = raised.value.errors
    assert (error.index, error.field) == (2, "survived")
    assert "item 0" in error.message and ID in error.message


@pytest.mark.parametrize(
    ("item", "field", "message"),
    [
        ("not an object", None, "must be an object"),
        ({"id": ID, "survived": 1, "Survived": 1}, "Survived", "unknown field 'Survived'"),
        ({"survived": 1}, "id", "is required"),
        ({"id": ID}, "survived", "is required"),
        ({"id": "892", "survived": 1}, "id", "uuid"),
        ({"id": 892, "survived": 1}, "id", "uuid"),
        ({"id": ID, "survived": 2}, "survived", "must be 0 or 1, got 2"),
        ({"id": ID, "survived": True}, "survived", "must be 0 or 1, got true"),
        ({"id": ID, "survived": "1"}, "survived", 'must be 0 or 1, got "1"'),
        ({"id": ID, "survived": None}, "survived", "must be 0 or 1, got null"),
        ({"id": ID, "survived": 0.5}, "survived", "must be 0 or 1, got 0.5"),
    ],
)
def test_a_bad_item_is_named_by_index_and_field(item: Any, field: str | None, message: str) -> None:
    with pytest.raises(InputError) as raised:
        outcomes.parse([{"id": OTHER, "survived": 0}, item])

    (error,) = raised.value.errors
    assert (error.index, error.field) == (1, field)
    assert message in error.message


def test_every_bad_item_is_listed() -> None:
    with pytest.raises(InputError) as raised:
        outcomes.parse([{"id": "x", "survived": 1}, {"id": ID, "survived": 1}, {"id": ID, "survived": 3, "note": ""}])

    assert [(e.index, e.field) for e in raised.value.errors] == [(0, "id"), (2, "note"), (2, "survived")]


@pytest.mark.parametrize(("body", "message"), [([], "empty"), ("text", "array"), (3, "array"), (None, "array")])
def test_a_body_that_is_no_list_of_outcomes_is_refused(body: Any, message: str) -> None:
    with pytest.raises(outcomes.OutcomeBodyError, match=message):
        outcomes.parse(body)


def test_summary_gives_accuracy_only_with_outcomes() -> None:
    assert outcomes.summary(0, 0) == {"count": 0, "correct": 0, "accuracy": None}
    assert outcomes.summary(4, 3) == {"count": 4, "correct": 3, "accuracy": 0.75}


SERVED = {
    "PassengerId": 892,
    "Pclass": 3,
    "Name": "Kelly, Mr. James",
    "Sex": "male",
    "Age": 34.5,
    "SibSp": 0,
    "Parch": 0,
    "Ticket": "330911",
    "Fare": 7.8292,
    "Cabin": None,
    "Embarked": "Q",
    "Survived": 0,
}


def test_new_examples_leave_out_known_rows_and_repeats() -> None:
    # train.csv's row as pandas reads it: numbers as floats, gaps as NaN, PassengerId ignored.
    known = [{**SERVED, "PassengerId": 5, "Age": 34.5, "Pclass": 3.0, "Cabin": math.nan}]
    again = {**SERVED, "PassengerId": 1000}
    other_label = {**SERVED, "Survived": 1}
    other_passenger = {**SERVED, "Age": None, "Ticket": ""}
    repeat = dict(other_passenger)

    rows = outcomes.new_examples([again, other_label, other_passenger, repeat], known)

    assert rows == [other_label, other_passenger]


def test_the_extract_reads_back_as_training_data_with_texts_kept(tmp_path: Path) -> None:
    rows = [
        {**SERVED, "Ticket": "0123", "Name": "", "Cabin": "C85", "Survived": 1},
        {**SERVED, "PassengerId": None, "Age": None, "Fare": None, "Embarked": None, "Survived": 0},
    ]
    path = tmp_path / "outcomes.csv"

    outcomes.write_extract(rows * 5, path)  # five of each: what 5-fold cross-validation needs
    X, y = load_training_data(path)

    assert path.read_text().splitlines()[0] == ",".join(outcomes.EXTRACT_COLUMNS)
    assert y.tolist() == [1, 0] * 5
    first, second = X.iloc[0], X.iloc[1]
    assert first["Ticket"] == "0123", "a ticket of digits stays text"
    assert first["Cabin"] == "C85" and first["Pclass"] == 3 and first["Fare"] == pytest.approx(7.8292)
    assert math.isnan(second["Age"]) and math.isnan(second["Fare"])


def test_the_extract_is_utf_8_whatever_the_locale(tmp_path: Path) -> None:
    """Written in a process whose locale is ASCII (LC_ALL=C, UTF-8 mode off), as a server's may be."""
    path = tmp_path / "outcomes.csv"
    row = {**SERVED, "Name": "Ödön, Mlle. 漢 🚢"}
    script = (  # ascii(): the command line itself is ASCII
        "import sys\n"
        "from pathlib import Path\n"
        "from titanic_web import outcomes\n"
        f"outcomes.write_extract([{ascii(row)}], Path(sys.argv[1]))\n"
    )
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0"}

    done = subprocess.run(
        [sys.executable, "-X", "utf8=0", "-c", script, str(path)], cwd=PROJECT_ROOT, env=env, capture_output=True
    )

    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert path.read_bytes().decode("utf-8").splitlines()[1].startswith('892,0,3,"Ödön, Mlle. 漢 🚢",male,')


def test_a_text_with_an_unpaired_surrogate_is_mended_in_the_extract_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Stored by a version that took JSON's "\\ud800" escape: no UTF-8 form, which crashed every
    `train --with-outcomes`. The row keeps its outcome, with U+FFFD in the surrogate's place."""
    rows = [
        {**SERVED, "Name": "Kelly, Mr. Ödön"},
        {**SERVED, "PassengerId": None, "Name": "Q\ud800, Mr. X", "Ticket": "A\udc80B", "Survived": 1},
    ]
    path = tmp_path / "outcomes.csv"

    outcomes.write_extract(rows * 5, path)
    X, y = load_training_data(path)

    assert y.tolist() == [0, 1] * 5
    assert X["Name"].tolist()[:2] == ["Kelly, Mr. Ödön", "Q\ufffd, Mr. X"]
    assert X["Ticket"].tolist()[:2] == ["330911", "A\ufffdB"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 10
    assert warnings[0] == (
        "outcomes: outcomes.csv, passenger 2 (PassengerId none): Name 'Q\\ud800, Mr. X' is not valid Unicode "
        "text: an unpaired surrogate (\\ud800) at character 2 (stored before the API refused such text); "
        "written with U+FFFD in its place"
    )
    assert warnings[1].startswith("outcomes: outcomes.csv, passenger 2 (PassengerId none): Ticket 'A\\udc80B'")
