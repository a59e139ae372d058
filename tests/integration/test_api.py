"""The JSON API end to end: /api/predict (JSON and CSV), its errors, and the status routes."""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import PASSENGER, TEST_CSV, TRAIN_CSV, count_rows, flush
from tests.integration.helpers import csv_with_cell, kaggle_rows
from titanic_web import features, get_service
from titanic_web.extensions import db
from titanic_web.models import FeatureRow, PredictionRow
from titanic_web.predictor import Predictor

#: Two more test.csv passengers (893, 894) with the same layout as PASSENGER.
WILKES: dict[str, Any] = {
    "PassengerId": 893,
    "Pclass": 3,
    "Name": "Wilkes, Mrs. James (Ellen Needs)",
    "Sex": "female",
    "Age": 47.0,
    "SibSp": 1,
    "Parch": 0,
    "Ticket": "363272",
    "Fare": 7.0,
    "Cabin": None,
    "Embarked": "S",
}
MYLES: dict[str, Any] = {
    "PassengerId": 894,
    "Pclass": 2,
    "Name": "Myles, Mr. Thomas Francis",
    "Sex": "male",
    "Age": 62.0,
    "SibSp": 0,
    "Parch": 0,
    "Ticket": "240276",
    "Fare": 9.6875,
    "Cabin": None,
    "Embarked": "Q",
}
ANSWER_KEYS = ["id", "PassengerId", "survived", "probability"]


# -- helpers -------------------------------------------------------------------------------------


def expected(predictor: Predictor, passengers: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(survived, probability rounded as the API rounds) straight from the model."""
    return [(p.survived, round(p.probability, 4)) for p in predictor.predict(passengers)]


def answered(body: dict[str, Any]) -> list[tuple[int, float]]:
    return [(p["survived"], p["probability"]) for p in body["predictions"]]


def stored(app: Flask, prediction_id: str) -> tuple[PredictionRow | None, FeatureRow | None]:
    """The two rows stored for one answered prediction (detached copies)."""
    key = uuid.UUID(prediction_id)
    flush(app)
    with app.app_context():
        row = db.session.get(PredictionRow, key)
        feature = db.session.get(FeatureRow, key)
        db.session.expunge_all()
    return row, feature


def assert_json_error(response: Any, status: int) -> dict[str, Any]:
    """The response is the API's JSON error shape with this status."""
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json", response.get_data(as_text=True)[:500]
    body = response.get_json()
    assert body["code"] == status
    assert isinstance(body["message"], str) and body["message"]
    return body


def post_csv(client: FlaskClient, data: bytes | str, **kwargs: Any) -> Any:
    if isinstance(data, str):
        data = data.encode()
    return client.post("/api/predict", data=data, content_type="text/csv", **kwargs)


# -- one passenger ------------------------------------------------------------------------------


def test_predict_one_answers_contract_shape(client: FlaskClient, predictor: Predictor) -> None:
    response = client.post("/api/predict", json=PASSENGER)

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert list(body) == ["model_version", "predictions"]
    assert body["model_version"] == predictor.version
    assert len(body["predictions"]) == 1
    answer = body["predictions"][0]
    assert list(answer) == ANSWER_KEYS
    assert str(uuid.UUID(answer["id"])) == answer["id"]
    assert answer["PassengerId"] == 892
    assert answer["survived"] in (0, 1)
    assert 0.0 <= answer["probability"] <= 1.0
    assert answered(body) == expected(predictor, [PASSENGER])


def test_predict_one_stores_prediction_and_features(client: FlaskClient, app: Flask) -> None:
    body = client.post("/api/predict", json=PASSENGER).get_json()
    answer = body["predictions"][0]

    assert count_rows(app) == (1, 1)
    row, feature = stored(app, answer["id"])
    assert row is not None and feature is not None
    assert row.passenger_id == 892
    assert row.survived == answer["survived"]
    assert row.probability == pytest.approx(answer["probability"], abs=5e-5)
    assert row.model_version == body["model_version"]
    assert row.source == "api"
    assert row.created_at is not None
    assert feature.model_version == body["model_version"]
    assert feature.raw_input == PASSENGER  # PASSENGER is already clean: every field, right types
    assert set(feature.features) == set(features.FEATURES)
    assert feature.features["Sex"] == "male"
    assert feature.features["Pclass"] == 3


@pytest.mark.parametrize("wrap", [False, True], ids=["object", "array"])
def test_predict_stores_the_clean_input_with_defaults(client: FlaskClient, app: Flask, wrap: bool) -> None:
    passenger = {"Pclass": 1, "Sex": " female ", "Age": 29}
    response = client.post("/api/predict", json=[passenger] if wrap else passenger)

    assert response.status_code == 200, response.get_json()
    answer = response.get_json()["predictions"][0]
    assert answer["PassengerId"] is None
    _, feature = stored(app, answer["id"])
    assert feature is not None
    assert feature.raw_input == {
        "PassengerId": None,
        "Pclass": 1,
        "Sex": "female",
        "Name": "",
        "Age": 29.0,
        "SibSp": 0,
        "Parch": 0,
        "Ticket": "",
        "Fare": None,
        "Cabin": None,
        "Embarked": None,
    }


def test_predict_array_keeps_order_and_stores_each(client: FlaskClient, app: Flask, predictor: Predictor) -> None:
    passengers = [MYLES, PASSENGER, WILKES]
    response = client.post("/api/predict", json=passengers)

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert [p["PassengerId"] for p in body["predictions"]] == [894, 892, 893]
    assert answered(body) == expected(predictor, passengers)
    ids = [p["id"] for p in body["predictions"]]
    assert len(set(ids)) == 3
    assert count_rows(app) == (3, 3)
    for answer, passenger in zip(body["predictions"], passengers, strict=True):
        row, feature = stored(app, answer["id"])
        assert row is not None and feature is not None
        assert row.passenger_id == passenger["PassengerId"]
        assert feature.raw_input == passenger


def test_one_passenger_predicts_as_inside_an_array(client: FlaskClient) -> None:
    alone = client.post("/api/predict", json=PASSENGER).get_json()["predictions"][0]
    among = client.post("/api/predict", json=[WILKES, PASSENGER, MYLES]).get_json()["predictions"][1]

    assert among["PassengerId"] == alone["PassengerId"] == 892
    assert (among["survived"], among["probability"]) == (alone["survived"], alone["probability"])
    assert among["id"] != alone["id"]


def test_json_with_charset_parameter_is_accepted(client: FlaskClient) -> None:
    response = client.post("/api/predict", data=json.dumps(PASSENGER), content_type="application/json; charset=utf-8")
    assert response.status_code == 200, response.get_json()


# -- CSV ----------------------------------------------------------------------------------------


def test_csv_body_predicts_every_passenger(client: FlaskClient, app: Flask, predictor: Predictor) -> None:
    response = post_csv(client, TEST_CSV.read_bytes())

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert len(body["predictions"]) == 418
    assert [p["PassengerId"] for p in body["predictions"]] == list(range(892, 1310))
    assert answered(body) == expected(predictor, kaggle_rows(TEST_CSV))
    assert count_rows(app) == (418, 418)


def test_csv_with_accept_csv_answers_a_kaggle_submission(client: FlaskClient, predictor: Predictor) -> None:
    response = post_csv(client, TEST_CSV.read_bytes(), headers={"Accept": "text/csv"})

    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert response.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[0] == ["PassengerId", "Survived"]
    assert len(rows) == 1 + 418
    assert [int(r[0]) for r in rows[1:]] == list(range(892, 1310))
    survived = [int(r[1]) for r in rows[1:]]
    assert set(survived) <= {0, 1}
    assert survived == [s for s, _ in expected(predictor, kaggle_rows(TEST_CSV))]


def test_csv_with_survived_column_is_accepted(client: FlaskClient, app: Flask) -> None:
    response = post_csv(client, TRAIN_CSV.read_bytes())

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert [p["PassengerId"] for p in body["predictions"]] == list(range(1, 892))
    assert count_rows(app) == (891, 891)


def test_csv_bad_cell_reports_its_line(client: FlaskClient, app: Flask) -> None:
    response = post_csv(client, csv_with_cell(4, "Age", "old"))

    body = assert_json_error(response, 422)
    assert body["errors"] == [{"index": 2, "field": "Age", "message": body["errors"][0]["message"], "line": 4}]
    assert "number" in body["errors"][0]["message"]
    assert count_rows(app) == (0, 0)


@pytest.mark.parametrize(
    ("field", "text"),
    [("Age", "2_2"), ("Fare", "\u0667"), ("SibSp", "\uff11"), ("PassengerId", "1_000")],
    ids=["underscore", "arabic-indic-digit", "fullwidth-digit", "id-underscore"],
)
def test_csv_number_written_as_no_csv_reader_writes_one_is_422(
    client: FlaskClient, app: Flask, field: str, text: str
) -> None:
    # Python's float() and int() read these as numbers; pandas, a spreadsheet or PostgreSQL would not.
    body = assert_json_error(post_csv(client, csv_with_cell(3, field, text)), 422)
    assert [(e["field"], e["line"]) for e in body["errors"]] == [(field, 3)]
    assert text in body["errors"][0]["message"]
    assert count_rows(app) == (0, 0)


def test_csv_row_with_missing_cells_reports_its_line(client: FlaskClient, app: Flask) -> None:
    text = "PassengerId,Pclass,Sex,Age\n1,3,male,22\n\n2,1,female\n"
    body = assert_json_error(post_csv(client, text), 422)

    assert [(e["line"], e["index"]) for e in body["errors"]] == [(4, 1)]
    assert count_rows(app) == (0, 0)


@pytest.mark.parametrize(
    ("header", "bad", "hint"),
    [
        ("PassengerId,Pclass,Name,Sex,Agee,SibSp,Parch,Ticket,Fare,Cabin,Embarked", "Agee", "'Age'"),
        ("PassengerId,Pclass,Name,Sex,Age,SibSp,Parch,Ticket,Fare,Cabin,Embarked,Lifeboat", "Lifeboat", "known fields"),
    ],
)
def test_csv_unknown_header_column_is_named(client: FlaskClient, app: Flask, header: str, bad: str, hint: str) -> None:
    rows = TEST_CSV.read_text().splitlines()[1:4]
    if bad == "Lifeboat":
        rows = [r + ",13" for r in rows]
    body = assert_json_error(post_csv(client, "\n".join([header, *rows]) + "\n"), 422)

    assert len(body["errors"]) == 1
    error = body["errors"][0]
    assert (error["field"], error["line"]) == (bad, 1)
    assert bad in error["message"] and hint in error["message"]
    assert count_rows(app) == (0, 0)


@pytest.mark.parametrize(
    ("text", "repeated"),
    [
        ("Pclass,Sex,Sex\n1,female,male\n", [("Sex", 2)]),
        ("Age,Pclass,Sex, Age ,Survived,Age,Survived\n5,1,male,6,1,7,0\n", [("Age", 3), ("Survived", 2)]),
    ],
    ids=["Sex-twice", "Age-thrice-Survived-twice"],
)
def test_csv_repeated_header_column_is_named(
    client: FlaskClient, app: Flask, text: str, repeated: list[tuple[str, int]]
) -> None:
    body = assert_json_error(post_csv(client, text), 422)

    assert [(e["index"], e["field"], e["line"]) for e in body["errors"]] == [(None, name, 1) for name, _ in repeated]
    for error, (name, times) in zip(body["errors"], repeated, strict=True):
        assert error["message"] == f"the header has the column '{name}' {times} times; give it once"
    assert count_rows(app) == (0, 0)


def test_csv_without_required_column_is_rejected(client: FlaskClient, app: Flask) -> None:
    body = assert_json_error(post_csv(client, "PassengerId,Pclass,Age\n1,3,22\n"), 422)

    assert [(e["field"], e["line"]) for e in body["errors"]] == [("Sex", 1)]
    assert count_rows(app) == (0, 0)


@pytest.mark.parametrize(
    "data",
    [b"", b"PassengerId,Pclass,Sex\n", b"PassengerId,Pclass,Sex\n1,3,m\xe4le\n"],
    ids=["empty", "header-only", "not-utf8"],
)
def test_unreadable_csv_is_400(client: FlaskClient, app: Flask, data: bytes) -> None:
    assert_json_error(post_csv(client, data), 400)
    assert count_rows(app) == (0, 0)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        # The next quote, on line 7, closes it: what follows that quote is where the reader stops.
        (6, "line 7: ',' expected after '\"' (in the row that begins on line 6)"),
        (419, "line 419: a quoted cell is not closed (the file ends inside it, on line 419)"),  # the last row
    ],
)
def test_csv_with_a_quote_left_open_is_400_naming_its_line(
    client: FlaskClient, app: Flask, line: int, message: str
) -> None:
    lines = TEST_CSV.read_text().splitlines()
    lines[line - 1] = "".join(lines[line - 1].rsplit('"', 1))  # its name's quote is not closed
    body = assert_json_error(post_csv(client, "\n".join(lines) + "\n"), 400)

    assert body["message"] == message
    assert count_rows(app) == (0, 0)


# -- bad requests -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b'{"Pclass": 3, "Sex": "male"',
        b"{'Pclass': 3}",
        b"",
        b'{"Name": "\xff"}',
        b'{"Pclass": 3, "Sex": "male", "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'[{"Pclass": 3, "Sex": "male", "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]",
    ],
    ids=["truncated", "single-quotes", "empty", "not-utf8", "nested-too-deeply", "nested-too-deeply-in-array"],
)
def test_malformed_json_is_400(client: FlaskClient, app: Flask, data: bytes) -> None:
    body = assert_json_error(client.post("/api/predict", data=data, content_type="application/json"), 400)
    assert "JSON" in body["message"]
    assert count_rows(app) == (0, 0)


#: More digits than Python's int() reads (4,300 by default): json reads whole numbers with it.
HUGE = "1" * 5000


@pytest.mark.parametrize(
    "data",
    [
        '{"PassengerId": ' + HUGE + ', "Pclass": 3, "Sex": "male"}',
        '[{"Pclass": 3, "Sex": "male"}, {"Age": ' + HUGE + ', "Pclass": 3, "Sex": "male"}]',
        "[" + HUGE + "]",
    ],
    ids=["object", "array-item", "bare-number"],
)
def test_json_whole_number_too_long_to_read_is_400(client: FlaskClient, app: Flask, data: str) -> None:
    body = assert_json_error(client.post("/api/predict", data=data, content_type="application/json"), 400)
    assert "malformed JSON: a whole number of more than 4300 digits" in body["message"]
    assert count_rows(app) == (0, 0)


@pytest.mark.parametrize("field", ["PassengerId", "Pclass", "SibSp", "Parch", "Age", "Fare"])
@pytest.mark.parametrize("sign", ["", "-"])
def test_json_whole_number_beyond_any_float_is_422_naming_its_field(
    client: FlaskClient, app: Flask, field: str, sign: str
) -> None:
    number = sign + "1" + "0" * 400  # read by int() (at most 4,300 digits), too large for float()
    data = '[{"Pclass": 3, "Sex": "male"}, {"Pclass": 3, "Sex": "male", ' + f'"{field}": {number}' + "}]"
    body = assert_json_error(client.post("/api/predict", data=data, content_type="application/json"), 422)
    assert [(e["index"], e["field"]) for e in body["errors"]] == [(1, field)]
    assert "whole number out of range (401 digits)" in body["errors"][0]["message"]
    assert count_rows(app) == (0, 0)


@pytest.mark.parametrize("field", ["PassengerId", "SibSp", "Parch", "Age"])
def test_csv_number_too_long_to_read_is_422_naming_its_field(client: FlaskClient, app: Flask, field: str) -> None:
    body = assert_json_error(post_csv(client, csv_with_cell(3, field, HUGE)), 422)
    assert [(e["field"], e["line"]) for e in body["errors"]] == [(field, 3)]
    assert count_rows(app) == (0, 0)


@pytest.mark.parametrize("value", ['"a passenger"', "42", "3.5", "null", "true"])
def test_top_level_json_scalar_is_400(client: FlaskClient, app: Flask, value: str) -> None:
    body = assert_json_error(client.post("/api/predict", data=value, content_type="application/json"), 400)
    assert "object" in body["message"] or "array" in body["message"]
    assert count_rows(app) == (0, 0)


def test_empty_array_is_400(client: FlaskClient, app: Flask) -> None:
    body = assert_json_error(client.post("/api/predict", json=[]), 400)
    assert "empty" in body["message"]
    assert count_rows(app) == (0, 0)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_or_missing_content_type_is_415(client: FlaskClient, app: Flask, content_type: str | None) -> None:
    kwargs = {} if content_type is None else {"content_type": content_type}
    response = client.post("/api/predict", data=json.dumps(PASSENGER), **kwargs)

    body = assert_json_error(response, 415)
    assert "application/json" in body["message"] and "text/csv" in body["message"]
    assert count_rows(app) == (0, 0)


def test_too_many_rows_is_413(make_app: Any) -> None:
    app = make_app(MAX_ROWS=3)
    client = app.test_client()

    assert client.post("/api/predict", json=[PASSENGER] * 3).status_code == 200
    body = assert_json_error(client.post("/api/predict", json=[PASSENGER] * 4), 413)
    assert "MAX_ROWS" in body["message"]
    assert count_rows(app) == (3, 3)  # only the accepted request


def test_csv_with_too_many_rows_is_413(make_app: Any) -> None:
    app = make_app(MAX_ROWS=3)
    client = app.test_client()
    lines = TEST_CSV.read_text().splitlines()

    assert post_csv(client, "\n".join(lines[:4]) + "\n").status_code == 200
    body = assert_json_error(post_csv(client, "\n".join(lines[:5]) + "\n"), 413)
    assert "MAX_ROWS" in body["message"]
    assert count_rows(app) == (3, 3)


def test_body_above_max_content_length_is_413(make_app: Any) -> None:
    app = make_app(MAX_CONTENT_LENGTH=2000)
    client = app.test_client()
    small = json.dumps([PASSENGER] * 2)
    large = json.dumps([PASSENGER] * 20)
    assert len(small) < 2000 < len(large)

    assert client.post("/api/predict", data=small, content_type="application/json").status_code == 200
    body = assert_json_error(client.post("/api/predict", data=large, content_type="application/json"), 413)
    assert "MAX_CONTENT_LENGTH" in body["message"]
    assert_json_error(post_csv(client, TEST_CSV.read_bytes()), 413)
    assert count_rows(app) == (2, 2)


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"Embarkd": "S"}, "Embarkd", "'Embarked'"),
        ({"age": 30}, "age", "'Age'"),
        ({"Age": 200}, "Age", "0 to 120"),
        ({"Pclass": 4}, "Pclass", "1"),
        ({"SibSp": -1}, "SibSp", "0"),
        ({"Fare": -5}, "Fare", "0"),
        ({"Embarked": "X"}, "Embarked", "'S'"),
        ({"Age": "thirty"}, "Age", "number"),
        ({"Pclass": "3"}, "Pclass", "got text"),
        ({"Pclass": 2.5}, "Pclass", "got 2.5"),
        ({"SibSp": 1.5}, "SibSp", "whole number"),
        ({"SibSp": True}, "SibSp", "got true"),
        ({"Name": 17}, "Name", "text"),
        ({"Sex": None}, "Sex", "required"),
        ({"Sex": ...}, "Sex", "required"),
        ({"Pclass": ...}, "Pclass", "required"),
    ],
    ids=[
        "unknown-close",
        "unknown-case",
        "age-range",
        "pclass-range",
        "sibsp-negative",
        "fare-negative",
        "embarked-choice",
        "age-type",
        "pclass-text",
        "pclass-fraction",
        "sibsp-fraction",
        "sibsp-bool",
        "name-type",
        "sex-null",
        "sex-missing",
        "pclass-missing",
    ],
)
@pytest.mark.parametrize("wrap", [False, True], ids=["object", "array"])
def test_invalid_passenger_is_422_naming_the_field(
    client: FlaskClient, app: Flask, change: dict[str, Any], field: str, fragment: str, wrap: bool
) -> None:
    passenger = {**PASSENGER, **change}
    passenger = {k: v for k, v in passenger.items() if v is not ...}

    body = assert_json_error(client.post("/api/predict", json=[passenger] if wrap else passenger), 422)

    assert body["errors"] == [{"index": 0, "field": field, "message": body["errors"][0]["message"]}]
    assert fragment in body["errors"][0]["message"]
    assert count_rows(app) == (0, 0)


def test_non_object_in_array_is_422(client: FlaskClient, app: Flask) -> None:
    body = assert_json_error(client.post("/api/predict", json=[PASSENGER, 7]), 422)

    assert [(e["index"], e["field"]) for e in body["errors"]] == [(1, None)]
    assert count_rows(app) == (0, 0)


def test_batch_with_bad_third_passenger_stores_nothing(client: FlaskClient, app: Flask) -> None:
    batch = [PASSENGER, WILKES, {**MYLES, "Age": 200}]

    body = assert_json_error(client.post("/api/predict", json=batch), 422)

    assert [(e["index"], e["field"]) for e in body["errors"]] == [(2, "Age")]
    assert count_rows(app) == (0, 0)


def test_every_invalid_passenger_is_reported_at_once(client: FlaskClient, app: Flask) -> None:
    batch = [{**PASSENGER, "Pclass": 0}, WILKES, {**MYLES, "Sex": "m", "Fare": "free"}]

    body = assert_json_error(client.post("/api/predict", json=batch), 422)

    assert sorted((e["index"], e["field"]) for e in body["errors"]) == [(0, "Pclass"), (2, "Fare"), (2, "Sex")]
    assert count_rows(app) == (0, 0)


@pytest.mark.parametrize(
    ("field", "text"), [("Name", "Kelly\x00, Mr. James"), ("Ticket", "\x1b[1m3309"), ("Cabin", "C\x7f")]
)
def test_text_with_a_control_character_is_422_naming_the_field_in_json_and_csv(
    client: FlaskClient, app: Flask, field: str, text: str
) -> None:
    # A page cannot show a NUL (HTML refuses it), nor would a name, ticket or cabin hold one.
    found = next(i for i, c in enumerate(text) if not c.isprintable())
    message = f"must not hold control characters, got U+{ord(text[found]):04X} at character {found + 1}"

    body = assert_json_error(client.post("/api/predict", json={**PASSENGER, field: text}), 422)
    assert body["errors"] == [{"index": 0, "field": field, "message": message}]
    body = assert_json_error(post_csv(client, csv_with_cell(3, field, text)), 422)
    assert body["errors"] == [{"index": 1, "field": field, "message": message, "line": 3}]
    assert count_rows(app) == (0, 0)


@pytest.mark.parametrize("field", ["Name", "Sex", "Ticket", "Cabin", "Embarked"])
@pytest.mark.parametrize("wrap", [False, True], ids=["object", "array"])
def test_text_with_an_unpaired_surrogate_is_422_naming_the_field(
    client: FlaskClient, app: Flask, field: str, wrap: bool
) -> None:
    """JSON's "\\ud800" escape is half a character: once stored with an outcome, it crashed
    every `flask train --with-outcomes` (the extract is UTF-8)."""
    passenger = json.dumps({**PASSENGER, field: "Q@, Mr. X"}).replace("@", "\\ud800")
    data = f"[{json.dumps(WILKES)}, {passenger}]" if wrap else passenger

    body = assert_json_error(client.post("/api/predict", data=data, content_type="application/json"), 422)

    message = "is not valid Unicode text: an unpaired surrogate (\\ud800) at character 2"
    assert body["errors"] == [{"index": 1 if wrap else 0, "field": field, "message": message}]
    assert count_rows(app) == (0, 0)


# -- routing errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "put", "delete"])
def test_wrong_method_on_predict_is_405_json(client: FlaskClient, method: str) -> None:
    response = getattr(client, method)("/api/predict")

    body = assert_json_error(response, 405)
    assert "POST" in body["message"] and "JSON" in body["message"]  # the hint says what to send
    allowed = {m.strip() for m in response.headers["Allow"].split(",")}
    assert "POST" in allowed and method.upper() not in allowed


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("put", "/", {"GET", "POST"}),
        ("delete", "/batch", {"GET", "POST"}),
        ("post", "/history", {"GET"}),
        ("post", "/dashboard", {"GET"}),
        ("post", "/docs", {"GET"}),
    ],
)
def test_wrong_method_on_a_page_is_405_html_saying_what_is_allowed(
    client: FlaskClient, method: str, path: str, allowed: set[str]
) -> None:
    response = getattr(client, method)(path)

    assert response.status_code == 405
    assert response.mimetype == "text/html"
    assert {m.strip() for m in response.headers["Allow"].split(",")} - {"HEAD", "OPTIONS"} == allowed


@pytest.mark.parametrize("method", ["get", "post"])
def test_unknown_api_path_is_404_json(client: FlaskClient, method: str) -> None:
    assert_json_error(getattr(client, method)("/api/nope"), 404)


# -- status routes -------------------------------------------------------------------------------


def test_health(client: FlaskClient) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_ready_reports_model_and_database(client: FlaskClient, model_dir: Path) -> None:
    card = json.loads((model_dir / "model.json").read_text())
    response = client.get("/api/ready")

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["model"]["loaded"] is True
    assert body["model"]["version"] == card["version"]
    assert body["database"]["status"] == "ok"


def test_model_card(client: FlaskClient, model_dir: Path) -> None:
    card = json.loads((model_dir / "model.json").read_text())
    response = client.get("/api/model")

    assert response.status_code == 200
    body = response.get_json()
    assert {name: body[name] for name in card} == card  # the card, plus outcomes and versions
    assert body["version"] and body["cv"]["accuracy_mean"] > 0.5


# -- no model, broken database, unexpected errors -------------------------------------------------


def test_without_model_predict_is_503_and_says_to_train(make_app: Any, no_model_dir: Path) -> None:
    app = make_app(MODEL_DIR=no_model_dir)
    client = app.test_client()

    body = assert_json_error(client.post("/api/predict", json=PASSENGER), 503)
    assert "train" in body["message"]
    assert_json_error(post_csv(client, TEST_CSV.read_bytes()), 503)
    assert count_rows(app) == (0, 0)


def test_without_model_ready_and_card_are_503(make_app: Any, no_model_dir: Path) -> None:
    client = make_app(MODEL_DIR=no_model_dir).test_client()

    response = client.get("/api/ready")
    assert response.status_code == 503
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["model"]["loaded"] is False
    assert "train" in body["model"]["error"]
    assert body["database"]["status"] == "ok"
    assert "train" in assert_json_error(client.get("/api/model"), 503)["message"]


def _drop_tables(app: Flask, db_file: Path) -> None:
    with app.app_context():
        db.drop_all()


def _drop_feature_store(app: Flask, db_file: Path) -> None:
    with app.app_context():
        FeatureRow.__table__.drop(db.engine)


def _corrupt_file(app: Flask, db_file: Path) -> None:
    with app.app_context():
        db.engine.dispose()  # pooled connections would keep the old file open
    db_file.write_bytes(b"this is not a database\n" * 512)


def _directory_instead(app: Flask, db_file: Path) -> None:
    with app.app_context():
        db.engine.dispose()
    db_file.unlink()
    db_file.mkdir()


@pytest.mark.parametrize(
    "breakage",
    [_drop_tables, _drop_feature_store, _corrupt_file, _directory_instead],
    ids=["tables-dropped", "feature-store-dropped", "file-corrupt", "file-is-directory"],
)
def test_unusable_database_degrades_ready_and_predictions_still_answer(
    make_app: Any, tmp_path: Path, breakage: Any
) -> None:
    app = make_app(RECORDER_RETRY_MAX_SECONDS=0.2)
    db_file = Path(app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///"))
    assert db_file.is_file() and str(db_file).startswith(str(tmp_path))
    breakage(app, db_file)
    client = app.test_client()

    response = client.get("/api/ready")

    assert response.mimetype == "application/json", response.get_data(as_text=True)[:300]
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "degraded"
    assert body["database"]["status"] == "degraded"
    assert body["model"]["loaded"] is True

    predicted = client.post("/api/predict", json=[PASSENGER, PASSENGER])
    assert predicted.status_code == 200, predicted.get_data(as_text=True)[:300]
    assert len(predicted.get_json()["predictions"]) == 2
    # The answers are kept on local disk until the database can take them.
    assert get_service(app).recorder.flush(timeout=0.5) is False
    after = client.get("/api/ready").get_json()
    assert after["status"] == "degraded"
    assert after["backlog"]["rows"] == 2
    assert after["backlog"]["oldest_age_seconds"] >= 0


def test_unexpected_error_is_json_500_without_internals(
    client: FlaskClient, app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internal detail /srv/app/model.py")

    monkeypatch.setattr(app.extensions["titanic"].predictor, "score_columns", explode)

    response = client.post("/api/predict", json=PASSENGER)

    body = assert_json_error(response, 500)
    text = response.get_data(as_text=True)
    for leak in ("Traceback", "RuntimeError", "secret internal detail", ".py", 'File "'):
        assert leak not in text
    assert count_rows(app) == (0, 0)
    assert body["message"]


# -- how a body is encoded, how an answer is asked for, the query ---------------------------------


def csv_head_text(count: int) -> str:
    """The header and the first ``count`` passengers of the competition's test.csv."""
    return "".join(TEST_CSV.read_text().splitlines(keepends=True)[: count + 1])


@pytest.mark.parametrize(
    "headers, status, expected",
    [
        ({"Content-Encoding": "gzip"}, 415, "Content-Encoding 'gzip' is not supported"),
        ({"Content-Encoding": "br"}, 415, "Content-Encoding 'br' is not supported"),
        ({"Content-Type": "application/json; charset=latin-1"}, 415, "charset 'latin-1' is not supported"),
        ({"Content-Type": "text/csv; charset=utf-16"}, 415, "charset 'utf-16' is not supported"),
        ({"Transfer-Encoding": "gzip, chunked"}, 501, "Transfer-Encoding 'gzip' is not supported"),
    ],
    ids=["gzip", "brotli", "json-latin-1", "csv-utf-16", "transfer-gzip"],
)
def test_a_body_in_a_coding_or_charset_the_api_does_not_read_is_refused_naming_it(
    client: FlaskClient, app: Flask, headers: dict[str, str], status: int, expected: str
) -> None:
    """A gzip body was read as text ("not UTF-8"), a Brotli label on a plain body was ignored and
    the body stored, and a Latin-1 one failed on its first accented letter."""
    headers = dict(headers)  # the parameter is shared by both databases' runs
    content_type = headers.pop("Content-Type", "application/json")
    body = json.dumps(PASSENGER) if content_type.startswith("application/json") else TEST_CSV.read_text()
    response = client.post("/api/predict", data=body, content_type=content_type, headers=headers)

    assert expected in assert_json_error(response, status)["message"]
    assert count_rows(app) == (0, 0)


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/json; charset=US-ASCII"])
def test_a_utf8_or_ascii_charset_is_read(client: FlaskClient, content_type: str) -> None:
    response = client.post("/api/predict", data=json.dumps(PASSENGER), content_type=content_type)
    assert response.status_code == 200, response.get_data(as_text=True)


def test_outcomes_refuse_a_compressed_body_too(client: FlaskClient) -> None:
    response = client.post("/api/outcomes", json=[], headers={"Content-Encoding": "gzip"})
    assert "Content-Encoding 'gzip'" in assert_json_error(response, 415)["message"]


@pytest.mark.parametrize(
    "accept, csv_answer",
    [
        ("text/csv; charset=utf-8", True),
        ("application/csv", True),
        ("text/csv;q=0.9, application/json;q=0.8", True),
        ("text/csv, application/json", False),  # as welcome: JSON, the default
        ("text/csv;q=0", False),
        ("text/html", False),
        ("text/*", True),
        ("*/*", False),
        ("", False),
        ("application/json;q=0, */*", True),
    ],
)
def test_the_answer_is_csv_when_the_client_prefers_it(client: FlaskClient, accept: str, csv_answer: bool) -> None:
    response = client.post("/api/predict", json=PASSENGER, headers={"Accept": accept})

    assert response.status_code == 200
    assert response.mimetype == ("text/csv" if csv_answer else "application/json")


@pytest.mark.parametrize(
    "query, expected",
    [
        ("explain=true&explain=maybe", "query parameter 'explain' is given 2 times; give it once"),
        ("Explain=true", "unknown query parameter 'Explain'; /api/predict takes explain"),
        ("foo=1", "unknown query parameter 'foo'"),
    ],
)
def test_a_query_the_api_does_not_take_is_400(client: FlaskClient, app: Flask, query: str, expected: str) -> None:
    """Only the first explain counted, and a misspelt parameter was ignored unseen."""
    response = client.post(f"/api/predict?{query}", json=PASSENGER)

    assert expected in assert_json_error(response, 400)["message"]
    assert count_rows(app) == (0, 0)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\n" + csv_head_text(2), "line 1 is blank: the first line must be the header"),
        ("sep=,\n" + csv_head_text(2), "line 1 is a spreadsheet's separator line (sep=...): remove it"),
        (csv_head_text(2).replace(",", ";"), "the header is separated by semicolons: the file must be comma-separated"),
        (csv_head_text(2).replace(",", "\t"), "the header is separated by tabs"),
    ],
    ids=["blank-first-line", "excel-sep-line", "semicolons", "tabs"],
)
def test_a_csv_from_a_spreadsheet_says_what_to_change(
    client: FlaskClient, app: Flask, text: str, expected: str
) -> None:
    body = assert_json_error(post_csv(client, text), 422)

    assert [(e["field"], e["line"]) for e in body["errors"]] == [(None, 1)]
    assert expected in body["errors"][0]["message"]
    assert count_rows(app) == (0, 0)
