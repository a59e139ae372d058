"""The passenger schema: one rule per field, messages that say how to fix the input."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from tests.conftest import PASSENGER
from titanic_web import schema
from titanic_web.schema import FIELD_NAMES, FIELDS_BY_NAME, InputError, validate_passenger, validate_passengers


def with_(**changes: Any) -> dict[str, Any]:
    """PASSENGER with some fields replaced."""
    return {**PASSENGER, **changes}


def without(*names: str) -> dict[str, Any]:
    """PASSENGER with some fields left out."""
    return {k: v for k, v in PASSENGER.items() if k not in names}


def renamed(old: str, new: str) -> dict[str, Any]:
    """PASSENGER with one field sent under another name."""
    raw = without(old)
    raw[new] = PASSENGER[old]
    return raw


def test_the_sample_passenger_is_valid() -> None:
    clean, errors = validate_passenger(PASSENGER)
    assert errors == []
    assert clean == PASSENGER


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        (with_(Age=-1), "Age", "must be a number from 0 to 120, got -1"),
        (with_(Age=121), "Age", "must be a number from 0 to 120, got 121"),
        (with_(Fare=-1), "Fare", "must be a number from 0 to 10000, got -1"),
        (with_(Fare=math.nan), "Fare", "got nan"),
        (with_(Fare=math.inf), "Fare", "got inf"),
        (with_(Fare=-math.inf), "Fare", "got -inf"),
        # Whole numbers beyond any float (JSON reads up to 4,300 digits): out of range, not a crash.
        (with_(Age=10**400), "Age", "must be a number from 0 to 120, got a whole number out of range (401 digits)"),
        (with_(Fare=-(10**4000)), "Fare", "got a negative whole number out of range (4001 digits)"),
        (
            with_(PassengerId=10**400),
            "PassengerId",
            "from 1 to 2147483647, got a whole number out of range (401 digits)",
        ),
        (with_(SibSp=-(10**400)), "SibSp", "got a negative whole number out of range (401 digits)"),
        (with_(Parch=10**400), "Parch", "got a whole number out of range (401 digits)"),
        (with_(Pclass=10**400), "Pclass", "must be one of 1, 2, 3, got a whole number out of range (401 digits)"),
        (with_(PassengerId=2**64), "PassengerId", "got 18446744073709551616"),  # short enough to be shown
        (with_(Age=10**5000), "Age", "got a whole number out of range"),  # more digits than str() writes
        (with_(SibSp=21), "SibSp", "must be a whole number from 0 to 20, got 21"),
        (with_(SibSp=-1), "SibSp", "must be a whole number from 0 to 20, got -1"),
        (with_(Parch=21), "Parch", "must be a whole number from 0 to 20, got 21"),
        (with_(Parch=-1), "Parch", "must be a whole number from 0 to 20, got -1"),
        (with_(SibSp=1.5), "SibSp", "got 1.5"),
        (with_(Pclass=0), "Pclass", "must be one of 1, 2, 3, got 0"),
        (with_(Pclass=4), "Pclass", "must be one of 1, 2, 3, got 4"),
        (with_(Pclass="1"), "Pclass", "got text '1'"),
        (with_(Pclass=True), "Pclass", "got true"),
        (with_(Pclass=2.5), "Pclass", "got 2.5"),
        (with_(Pclass=[1]), "Pclass", "got an array"),
        (without("Pclass"), "Pclass", "is required: one of 1, 2, 3"),
        (with_(Pclass=None), "Pclass", "is required"),
        (with_(Sex="Male"), "Sex", "must be one of 'male', 'female', got 'Male'"),
        (with_(Sex=1), "Sex", "got int"),
        (without("Sex"), "Sex", "is required: one of 'male', 'female'"),
        (with_(Embarked="X"), "Embarked", "must be one of 'C', 'Q', 'S', got 'X'"),
        (with_(Name="x" * 201), "Name", "at most 200 characters, got 201 characters"),
        (with_(Name="Kelly\x00, Mr."), "Name", "must not hold control characters, got U+0000 at character 6"),
        (with_(Ticket="\x1b[0m330911"), "Ticket", "must not hold control characters, got U+001B at character 1"),
        (with_(Cabin="C8\x7f5"), "Cabin", "must not hold control characters, got U+007F at character 3"),
        (with_(SibSp=None), "SibSp", "may be omitted but not null"),
        (with_(Parch=None), "Parch", "may be omitted but not null"),
        (renamed("Age", "age"), "age", "unknown field 'age'; did you mean 'Age'?"),
        (renamed("Pclass", "pclass"), "pclass", "unknown field 'pclass'; did you mean 'Pclass'?"),
        (with_(Fare_=1.0), "Fare_", "unknown field 'Fare_'; did you mean 'Fare'?"),
        (with_(Lifeboat="13"), "Lifeboat", "unknown field 'Lifeboat'; known fields: " + ", ".join(FIELD_NAMES)),
    ],
)
def test_validate_passenger_rejects(raw: dict[str, Any], field: str, message: str) -> None:
    _, errors = validate_passenger(raw, index=7)
    assert [(e.index, e.field) for e in errors if e.field == field] == [(7, field)], errors
    assert message in [e for e in errors if e.field == field][0].message


@pytest.mark.parametrize(
    ("field", "value"),
    [("Age", -1), ("Fare", math.nan), ("Pclass", "1"), ("Sex", "Male"), ("Embarked", "X")],
)
def test_a_bad_value_is_the_only_error(field: str, value: Any) -> None:
    _, errors = validate_passenger(with_(**{field: value}))
    assert [e.field for e in errors] == [field]


def test_a_misspelt_field_also_misses_the_required_one() -> None:
    _, errors = validate_passenger(renamed("Pclass", "pclass"))
    assert {e.field for e in errors} == {"pclass", "Pclass"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([PASSENGER], "a passenger must be a JSON object, got an array"),
        ("Kelly", "a passenger must be a JSON object, got text 'Kelly'"),
        (3, "a passenger must be a JSON object, got int"),
        (None, "a passenger must be a JSON object, got NoneType"),
    ],
)
def test_a_passenger_must_be_an_object(raw: Any, message: str) -> None:
    clean, errors = validate_passenger(raw, index=2)
    assert clean == {}
    assert [(e.index, e.field, e.message) for e in errors] == [(2, None, message)]


def test_suggest() -> None:
    assert schema.suggest("age") == "Age"
    assert schema.suggest("PCLASS") == "Pclass"
    assert schema.suggest("Fare_") == "Fare"
    assert schema.suggest("Embarkd") == "Embarked"
    assert schema.suggest("Lifeboat") is None


# --- valid input -------------------------------------------------------------


def test_missing_optional_fields_take_their_defaults() -> None:
    clean, errors = validate_passenger({"Pclass": 2, "Sex": "female"})
    assert errors == []
    assert set(clean) == set(FIELD_NAMES)
    assert clean["SibSp"] == 0
    assert clean["Parch"] == 0
    assert clean["Name"] == ""
    assert clean["Ticket"] == ""
    for name in ("PassengerId", "Age", "Fare", "Cabin", "Embarked"):
        assert clean[name] is None, name


@pytest.mark.parametrize("name", ["Age", "Fare", "Cabin", "Embarked", "PassengerId"])
def test_null_is_allowed_where_the_data_has_gaps(name: str) -> None:
    clean, errors = validate_passenger(with_(**{name: None}))
    assert errors == []
    assert clean[name] is None


@pytest.mark.parametrize("name", ["SibSp", "Parch", "Name", "Ticket"])
def test_null_is_refused_for_fields_with_a_default(name: str) -> None:
    _, errors = validate_passenger(with_(**{name: None}))
    assert [e.field for e in errors] == [name]
    assert "may be omitted but not null" in errors[0].message


def test_an_integral_float_counts_as_a_whole_number() -> None:
    clean, errors = validate_passenger(with_(Pclass=3.0, SibSp=2.0))
    assert errors == []
    assert clean["Pclass"] == 3 and type(clean["Pclass"]) is int
    assert clean["SibSp"] == 2 and type(clean["SibSp"]) is int


def test_numbers_become_the_field_type() -> None:
    clean, errors = validate_passenger(with_(Age=30, Fare=8))
    assert errors == []
    assert clean["Age"] == 30.0 and type(clean["Age"]) is float
    assert clean["Fare"] == 8.0 and type(clean["Fare"]) is float


def test_text_is_stripped_and_a_blank_cabin_is_unknown() -> None:
    clean, errors = validate_passenger(with_(Sex=" male ", Cabin="  ", Name="  Kelly, Mr. James "))
    assert errors == []
    assert clean["Sex"] == "male"
    assert clean["Cabin"] is None
    assert clean["Name"] == "Kelly, Mr. James"


@pytest.mark.parametrize(
    ("name", "value"), [("Age", 0), ("Age", 120), ("Age", 0.42), ("Fare", 0), ("SibSp", 20), ("Parch", 0)]
)
def test_range_bounds_are_inclusive(name: str, value: Any) -> None:
    _, errors = validate_passenger(with_(**{name: value}))
    assert errors == []


def test_name_at_the_length_limit_is_accepted() -> None:
    _, errors = validate_passenger(with_(Name="x" * FIELDS_BY_NAME["Name"].max_length))
    assert errors == []


TEXT_FIELDS = [f.name for f in schema.FIELDS if f.kind is str]


@pytest.mark.parametrize("field", TEXT_FIELDS)
@pytest.mark.parametrize("surrogate", ["\ud800", "\udfff", "\udea2\ud83d"], ids=["high", "low", "pair-reversed"])
def test_text_with_an_unpaired_surrogate_is_refused(field: str, surrogate: str) -> None:
    """What JSON's "\\ud800" escape makes: text no UTF-8 file or database can hold (the outcomes
    extract crashed on it), refused in every text field, choices included."""
    _, errors = validate_passenger(with_(**{field: f" Q{surrogate}, Mr. X"}), index=3)
    assert [(e.index, e.field) for e in errors] == [(3, field)]
    found = f"\\u{ord(surrogate[0]):04x}"
    assert errors[0].message == f"is not valid Unicode text: an unpaired surrogate ({found}) at character 3"
    errors[0].message.encode("ascii")  # the message never holds the surrogate itself


@pytest.mark.parametrize("field", ["Name", "Ticket", "Cabin"])
def test_text_beyond_ascii_and_paired_surrogates_are_accepted(field: str) -> None:
    value = json.loads('"\\u00d6d\\u00f6n \\ud83d\\udea2 \\u6f22"')  # a pair of escapes is one character
    clean, errors = validate_passenger(with_(**{field: value}))
    assert errors == []
    assert clean[field] == "Ödön 🚢 漢"


# --- many passengers ---------------------------------------------------------


def test_validate_passengers_returns_clean_rows_in_order() -> None:
    rows = validate_passengers([PASSENGER, with_(PassengerId=893, Pclass=1.0)])
    assert [r["PassengerId"] for r in rows] == [892, 893]
    assert rows[1]["Pclass"] == 1


def test_validate_passengers_collects_errors_from_every_row() -> None:
    raws = [PASSENGER, with_(Age=-1), PASSENGER, with_(Sex="Male", Pclass=4), "not a passenger"]
    with pytest.raises(InputError) as info:
        validate_passengers(raws)
    found = sorted((e.index, e.field) for e in info.value.errors)
    assert found == [(1, "Age"), (3, "Pclass"), (3, "Sex"), (4, None)]
    assert str(info.value) == "4 invalid field(s)"


def test_validate_passengers_of_nothing_is_nothing() -> None:
    assert validate_passengers([]) == []


def test_field_error_as_dict_names_the_line_only_when_known() -> None:
    assert schema.FieldError(0, "Age", "bad").as_dict() == {"index": 0, "field": "Age", "message": "bad"}
    assert schema.FieldError(0, "Age", "bad", line=3).as_dict()["line"] == 3


# --- text cells (form and CSV) -----------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("Pclass", "1", 1),
        ("Pclass", " 2 ", 2),
        ("Pclass", "3.0", 3),
        ("Pclass", "2.5", 2.5),
        ("Pclass", "first", "first"),
        ("Age", "34.5", 34.5),
        ("Age", "30", 30.0),
        ("Age", "old", "old"),
        ("Age", "1_0", "1_0"),  # float() reads these three as numbers; no CSV reader does
        ("Fare", "\u0663", "\u0663"),  # ARABIC-INDIC DIGIT THREE
        ("SibSp", "\uff11", "\uff11"),  # FULLWIDTH DIGIT ONE
        ("Age", "1e1", 10.0),
        ("SibSp", "1", 1),
        ("Name", " Kelly, Mr. James ", "Kelly, Mr. James"),
        ("Ticket", "330911", "330911"),
        ("Age", "", None),
        ("Age", "   ", None),
        ("Cabin", "", None),
        ("Age", None, None),
    ],
)
def test_parse_text(name: str, text: str | None, expected: Any) -> None:
    value = schema.parse_text(FIELDS_BY_NAME[name], text)
    assert value == expected
    assert type(value) is type(expected)


def test_parse_text_row_turns_a_csv_row_into_values() -> None:
    row = {
        "PassengerId": "892",
        "Pclass": "3",
        "Name": "Kelly, Mr. James",
        "Sex": "male",
        "Age": "34.5",
        "SibSp": "0",
        "Parch": "0",
        "Ticket": "330911",
        "Fare": "7.8292",
        "Cabin": "",
        "Embarked": "Q",
    }
    parsed = schema.parse_text_row(row)
    assert parsed == PASSENGER
    assert validate_passengers([parsed]) == [PASSENGER]


def test_parse_text_row_empty_optional_cells_take_defaults() -> None:
    parsed = schema.parse_text_row({"Pclass": "1", "Sex": "female", "SibSp": "", "Parch": " ", "Name": "", "Age": ""})
    assert "SibSp" not in parsed and "Parch" not in parsed and "Name" not in parsed
    assert parsed["Age"] is None  # nullable: an empty cell is an unknown value
    clean = validate_passengers([parsed])[0]
    assert (clean["SibSp"], clean["Parch"], clean["Name"], clean["Age"]) == (0, 0, "", None)


def test_parse_text_row_empty_required_cell_is_reported_as_required() -> None:
    parsed = schema.parse_text_row({"Pclass": "", "Sex": "male"})
    assert parsed["Pclass"] is None
    _, errors = validate_passenger(parsed)
    assert [(e.field, e.message) for e in errors] == [("Pclass", "is required: one of 1, 2, 3")]


def test_parse_text_row_keeps_non_numbers_so_validation_names_them() -> None:
    parsed = schema.parse_text_row({"Pclass": "first", "Sex": "male", "Age": "old", "SibSp": "two"})
    _, errors = validate_passenger(parsed)
    messages = {e.field: e.message for e in errors}
    assert set(messages) == {"Pclass", "Age", "SibSp"}
    assert "got text 'first'" in messages["Pclass"]
    assert "got text 'old'" in messages["Age"]
    assert "got text 'two'" in messages["SibSp"]


def test_parse_text_row_ignores_survived_but_keeps_unknown_columns() -> None:
    parsed = schema.parse_text_row({"Pclass": "1", "Sex": "male", "Survived": "1", "Boat": "13"})
    assert "Survived" not in parsed
    assert parsed["Boat"] == "13"
    _, errors = validate_passenger(parsed)
    assert [e.field for e in errors] == ["Boat"]
