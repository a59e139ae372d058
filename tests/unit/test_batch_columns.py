"""The batch path's column-at-a-time checks give exactly the row-at-a-time results."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from tests.conftest import TEST_CSV, TRAIN_CSV
from titanic_web import features, jsontext, schema
from titanic_web.schema import BatchChecker


def table(path: Path) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    return [h.strip() for h in rows[0]], rows[1:]


def one_by_one(header: list[str], rows: list[list[str]], first_index: int = 0) -> schema.CheckedRows:
    """The general functions, a row at a time: what the column checks must reproduce."""
    clean_rows: list[dict[str, object]] = []
    errors: list[tuple[int, list[schema.FieldError]]] = []
    kept: list[int] = []
    for position, cells in enumerate(rows):
        if len(cells) != len(header):
            row_errors = [
                schema.FieldError(
                    first_index + len(kept), None, f"has {len(cells)} cells, the header has {len(header)}"
                )
            ]
            clean = {}
        else:
            clean, row_errors = schema.validate_passenger(
                schema.parse_text_row(dict(zip(header, cells, strict=True))), index=first_index + len(kept)
            )
        if row_errors and not any(c.strip() for c in cells):
            continue
        kept.append(position)
        if row_errors:
            errors.append((position, row_errors))
        else:
            clean_rows.append(clean)
    columns = {name: [c[name] for c in clean_rows] for name in schema.FIELD_NAMES}
    texts = [json.dumps(c, separators=(",", ":")) for c in clean_rows]
    return schema.CheckedRows.of_texts(columns, texts, errors, kept)


@pytest.mark.parametrize("path", [TRAIN_CSV, TEST_CSV], ids=["train", "test"])
def test_every_competition_row_checks_the_same_by_column(path: Path) -> None:
    header, rows = table(path)
    checker = BatchChecker()
    by_column = checker.check_text_rows(header, checker.csv_plan(header), rows, first_index=0)
    expected = one_by_one(header, rows)
    assert by_column == expected
    assert not by_column.errors and len(by_column.texts) == len(rows)
    # and the JSON text is json.dumps of the clean passenger, as the general path writes it
    clean = [
        dict(zip(schema.FIELD_NAMES, values, strict=True)) for values in zip(*by_column.columns.values(), strict=True)
    ]
    assert by_column.texts == [json.dumps(c, separators=(",", ":")) for c in clean]
    # a second pass, answered from the remembered outcomes, is the same again
    assert checker.check_text_rows(header, checker.csv_plan(header), rows, first_index=0) == expected


HEADER = ["PassengerId", "Pclass", "Name", "Sex", "Age", "SibSp", "Parch", "Ticket", "Fare", "Cabin", "Embarked"]
GOOD = ["1", "3", "Braund, Mr. Owen", "male", "22", "1", "0", "A/5 21171", "7.25", "", "S"]


def variant(**cells: str) -> list[str]:
    row = list(GOOD)
    for name, text in cells.items():
        row[HEADER.index(name)] = text
    return row


HOSTILE = [
    variant(PassengerId=" 12 "),
    variant(PassengerId="+7"),
    variant(PassengerId="1_000"),
    variant(PassengerId="٣"),
    variant(PassengerId="²"),
    variant(PassengerId="0"),
    variant(PassengerId="2147483648"),
    variant(PassengerId="3.0"),
    variant(PassengerId=""),
    variant(Pclass="3.0"),
    variant(Pclass="4"),
    variant(Pclass=""),
    variant(Sex="Male"),
    variant(Age="nan"),
    variant(Age="inf"),
    variant(Age="-1"),
    variant(Age="1e1"),
    variant(Age=" "),
    variant(Age="abc"),
    variant(SibSp="2.5"),
    variant(SibSp=""),
    variant(Fare="10001"),
    variant(Fare=""),
    variant(Embarked="X"),
    variant(Embarked=""),
    variant(Name=""),
    variant(Name="  "),
    variant(Name='Ünïcode, Mrs. "Q"\ttab'),
    variant(Name="x" * 201),
    variant(Ticket="t" * 51),
    variant(Cabin=" C85 "),
    variant(Cabin="c" * 51),
    ["", "", "", "", "", "", "", "", "", "", ""],  # a line of empty cells: not a passenger
    ["1", "3"],  # too few cells
    GOOD,
]


@pytest.mark.parametrize("first_index", [0, 40])
def test_hostile_cells_check_the_same_by_column(first_index: int) -> None:
    checker = BatchChecker()
    plan = checker.csv_plan(HEADER)
    assert checker.check_text_rows(HEADER, plan, HOSTILE, first_index=first_index) == one_by_one(
        HEADER, HOSTILE, first_index
    )
    # each row alone too, so that a row's problem cannot hide behind another's
    for row in HOSTILE:
        assert checker.check_text_rows(HEADER, plan, [row], first_index=first_index) == one_by_one(
            HEADER, [row], first_index
        ), row


def unique_rows(count: int) -> list[list[str]]:
    """Rows whose ids, names and tickets are all different, as in a real passenger list: the
    checker has seen none of those values, and checks such columns whole."""
    return [variant(PassengerId=str(n), Name=f"Braund {n}, Mr. Owen", Ticket=f"A/5 {n}") for n in range(1, count + 1)]


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("PassengerId", text)
        for text in (" 12 ", "+7", "1_000", "٣", "²", "0", "2147483648", "3.0", "", "007", "1" * 19, "9" * 5000)
    ]
    + [
        ("Name", text)
        for text in ("", "  ", " padded ", 'Ünïcode, Mrs. "Q"\ttab', "x" * 201, "x" * 200, "a\x00b", "\x1b")
    ]
    + [("Ticket", text) for text in ("", "t" * 51, "t" * 50)],
)
def test_a_column_of_new_values_checks_the_same_with_any_cell_anywhere(field: str, text: str) -> None:
    rows = unique_rows(200)
    rows[150][HEADER.index(field)] = text
    checker = BatchChecker()
    assert checker.check_text_rows(HEADER, checker.csv_plan(HEADER), rows, first_index=3) == one_by_one(
        HEADER, rows, 3
    ), (field, text)


def test_a_column_checked_whole_is_remembered_as_cell_by_cell_and_within_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checker = BatchChecker()
    rows = unique_rows(400)
    expected = one_by_one(HEADER, rows)
    assert checker.check_text_rows(HEADER, checker.csv_plan(HEADER), rows, first_index=0) == expected
    memory = checker._text_memo
    by_cell = BatchChecker()
    for name in ("PassengerId", "Name", "Ticket"):
        field = schema.FIELDS_BY_NAME[name]
        assert len(memory[name]) == 400
        assert all(memory[name][text] == by_cell._check_text(field, text) for text in memory[name]), name
    # the same rows again come from memory, with the same result
    assert checker.check_text_rows(HEADER, checker.csv_plan(HEADER), rows, first_index=0) == expected
    # the memory stays within its bound, also for a chunk larger than it (not remembered)
    monkeypatch.setattr(BatchChecker, "MEMORY", 100)
    larger = BatchChecker()
    assert larger.check_text_rows(HEADER, larger.csv_plan(HEADER), rows, first_index=0) == expected
    assert larger._text_memo["PassengerId"] == {} and larger._text_memo["Name"] == {}
    monkeypatch.setattr(BatchChecker, "MEMORY", 500)
    small = BatchChecker()
    for start in (0, 400, 800):
        more = unique_rows(start + 300)[start:]
        assert small.check_text_rows(HEADER, small.csv_plan(HEADER), more, first_index=0) == one_by_one(HEADER, more)
        assert all(len(memo) <= 500 for memo in small._text_memo.values())


def test_a_chunk_reports_every_bad_row_with_its_index_and_skips_empty_lines() -> None:
    rows = [GOOD, variant(Age="200"), ["", "", "", "", "", "", "", "", "", "", ""], variant(Sex="robot"), GOOD]
    checker = BatchChecker()
    checked = checker.check_text_rows(HEADER, checker.csv_plan(HEADER), rows, first_index=10)
    assert checked.kept == [0, 1, 3, 4]
    assert [(position, [(e.index, e.field) for e in errors]) for position, errors in checked.errors] == [
        (1, [(11, "Age")]),
        (3, [(12, "Sex")]),
    ]
    assert len(checked.texts) == 2


def test_columns_in_another_order_and_missing_optional_columns_take_the_defaults() -> None:
    header = ["Sex", "Pclass", "Survived"]
    rows = [["female", "1", "1"], ["male", "3", "0"]]
    checker = BatchChecker()
    checked = checker.check_text_rows(header, checker.csv_plan(header), rows, first_index=0)
    assert checked == one_by_one(header, rows)
    assert checked.columns["SibSp"] == [0, 0] and checked.columns["Age"] == [None, None]


def test_features_json_matches_json_dumps_of_the_record_for_every_competition_row() -> None:
    passengers: list[dict[str, object]] = []
    for path in (TRAIN_CSV, TEST_CSV):
        header, rows = table(path)
        checked = one_by_one(header, rows)
        passengers += [
            dict(zip(schema.FIELD_NAMES, values, strict=True)) for values in zip(*checked.columns.values(), strict=True)
        ]
    # -0.0 is written "-0.0", as json.dumps does: first in its columns (where a set of the values
    # keeps it for both zeros), and last
    negative = {**passengers[0], "Age": -0.0, "Fare": -0.0}
    passengers = [negative, *passengers, negative]
    rows = features.engineer_many(
        passengers,
        known=features.Known(ticket_counts={"347082": 7}, groups={"T 347082": (3, 1), "F andersson 3 31.27": (2, 2)}),
    )
    assert any(math.isnan(r[1]) for r in rows), "some ages are unknown: the NaN case is covered"
    expected = [json.dumps(features.to_record(r), separators=(",", ":")) for r in rows]
    assert features.features_json(rows) == expected  # by column
    assert [text for r in rows for text in features.features_json([r])] == expected  # row by row
    assert features.features_json([]) == []


def test_numbers_written_once_are_remembered_within_a_bound_and_keep_their_sign() -> None:
    values = [0.0, -0.0, math.nan, 1.5, -1.5, 7.8292, -0.0, 0.0, *(i + 0.25 for i in range(12_000))]
    for value in values * 2:
        assert jsontext.number(value) == ("null" if math.isnan(value) else json.dumps(value))
    expected = ["null" if math.isnan(value) else json.dumps(value) for value in values]
    assert jsontext.numbers(values) == expected  # all remembered now, or past the bound
    assert jsontext.strings(["male", 'a "b"', "male"]) == [json.dumps(v) for v in ["male", 'a "b"', "male"]]
    assert len(jsontext._NUMBERS) <= 10_000
    assert not any(math.isnan(key) or math.copysign(1.0, key) < 0 and key == 0 for key in jsontext._NUMBERS)
