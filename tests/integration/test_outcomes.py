"""POST /api/outcomes, accuracy on outcomes per version in GET /api/model, and `train --with-outcomes`,
each on SQLite and on PostgreSQL."""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.conftest import PASSENGER, TEST_CSV, TRAIN_CSV, flush
from tests.integration.conftest import ADMIN
from tests.integration.helpers import kaggle_rows
from titanic_web import registry
from titanic_web.extensions import db
from titanic_web.models import FeatureRow, OutcomeRow
from titanic_web.training import sha256_file

UNKNOWN = "00000000-0000-4000-8000-000000000000"


def post_outcomes(client: FlaskClient, body: Any) -> TestResponse:
    return client.post("/api/outcomes", json=body)


def predict(client: FlaskClient, passengers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Predict passengers through the API; their answers (id, survived, ...) with the version."""
    response = client.post("/api/predict", json=passengers)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    return [{**p, "model_version": body["model_version"]} for p in body["predictions"]]


def stored_outcomes(app: Flask) -> dict[str, tuple[int, Any]]:
    with app.app_context():
        rows = db.session.execute(db.select(OutcomeRow.prediction_id, OutcomeRow.survived, OutcomeRow.recorded_at))
        return {str(i): (s, at) for i, s, at in rows}


def test_outcomes_are_recorded(app: Flask, client: FlaskClient) -> None:
    answers = predict(client, kaggle_rows(TEST_CSV)[:3])
    flush(app)
    body = [{"id": a["id"], "survived": s} for a, s in zip(answers, (1, 0, 1), strict=True)]

    response = post_outcomes(client, body)

    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    assert (answer["recorded"], answer["unchanged"]) == (3, 0)
    assert [o["status"] for o in answer["outcomes"]] == ["recorded"] * 3
    assert {i: s for i, (s, _) in stored_outcomes(app).items()} == {b["id"]: b["survived"] for b in body}


def test_the_same_outcome_again_changes_nothing(app: Flask, client: FlaskClient) -> None:
    (answer,) = predict(client, [PASSENGER])
    flush(app)
    assert post_outcomes(client, [{"id": answer["id"], "survived": 0}]).status_code == 200
    before = stored_outcomes(app)

    response = post_outcomes(client, [{"id": answer["id"], "survived": 0}])

    assert response.status_code == 200
    assert (response.get_json()["recorded"], response.get_json()["unchanged"]) == (0, 1)
    assert stored_outcomes(app) == before, "the first recording (and its time) stays"


def test_a_conflicting_outcome_is_refused_and_nothing_stored(app: Flask, client: FlaskClient) -> None:
    first, second = predict(client, kaggle_rows(TEST_CSV)[:2])
    flush(app)
    assert post_outcomes(client, {"id": first["id"], "survived": 1}).status_code == 200

    response = post_outcomes(client, [{"id": second["id"], "survived": 0}, {"id": first["id"], "survived": 0}])

    assert response.status_code == 409
    body = response.get_json()
    assert body["code"] == 409 and "nothing was stored" in body["message"]
    (error,) = body["errors"]
    assert (error["index"], error["field"]) == (1, "survived")
    assert first["id"] in error["message"] and "survived=1" in error["message"]
    assert set(stored_outcomes(app)) == {first["id"]}, "the valid outcome beside the conflict is not stored either"


def test_an_unknown_id_is_an_error_for_that_item_and_nothing_is_stored(app: Flask, client: FlaskClient) -> None:
    (answer,) = predict(client, [PASSENGER])
    flush(app)

    response = post_outcomes(client, [{"id": answer["id"], "survived": 1}, {"id": UNKNOWN, "survived": 0}])

    assert response.status_code == 422
    body = response.get_json()
    assert "nothing was stored" in body["message"]
    (error,) = body["errors"]
    assert (error["index"], error["field"]) == (1, "id")
    assert UNKNOWN in error["message"] and "about a second after they are answered" in error["message"]
    assert stored_outcomes(app) == {}


@pytest.mark.parametrize(
    ("body", "index", "field"),
    [
        ([{"id": "892", "survived": 1}], 0, "id"),
        ([{"id": UNKNOWN, "survived": 2}], 0, "survived"),
        ([{"id": UNKNOWN, "survived": 1, "PassengerId": 892}], 0, "PassengerId"),
        ([{"id": UNKNOWN}], 0, "survived"),
    ],
)
def test_invalid_items_are_422_by_index_and_field(client: FlaskClient, body: Any, index: int, field: str) -> None:
    response = post_outcomes(client, body)

    assert response.status_code == 422
    errors = response.get_json()["errors"]
    assert [(e["index"], e["field"]) for e in errors] == [(index, field)]


def test_past_a_thousand_errors_the_count_says_how_many_as_for_predictions(client: FlaskClient) -> None:
    response = post_outcomes(client, [{"id": "892", "survived": 2}] * 700)  # two errors an item

    assert response.status_code == 422
    body = response.get_json()
    assert body["error_count"] == 1400
    assert body["message"] == "1400 invalid fields (the first 1000 are listed); nothing was stored"
    assert [(e["index"], e["field"]) for e in body["errors"]] == [
        (i // 2, ("id", "survived")[i % 2]) for i in range(1000)
    ]


@pytest.mark.parametrize(
    ("send", "status"),
    [
        ({"data": "[]", "content_type": "application/json"}, 400),
        ({"data": "[{", "content_type": "application/json"}, 400),
        ({"data": '"yes"', "content_type": "application/json"}, 400),
        ({"data": "id,survived", "content_type": "text/csv"}, 415),
    ],
)
def test_bodies_that_are_no_outcomes_are_refused(client: FlaskClient, send: dict[str, str], status: int) -> None:
    response = client.post("/api/outcomes", **send)

    assert response.status_code == status
    assert response.get_json()["code"] == status


def test_more_outcomes_than_max_rows_is_413(make_app: Any) -> None:
    client = make_app(MAX_ROWS=2).test_client()

    response = post_outcomes(client, [{"id": UNKNOWN, "survived": 1}] * 3)

    assert response.status_code == 413
    assert "MAX_ROWS" in response.get_json()["message"]


def test_accuracy_on_outcomes_per_version(registry_app: Flask, model_registry: Path) -> None:
    client = registry_app.test_client()
    first = registry.read_active(model_registry)
    (second,) = [v.version for v in registry.versions(model_registry) if v.version != first]
    passengers = kaggle_rows(TEST_CSV)[:8]
    by_first = predict(client, passengers[:5])
    assert client.post("/api/model/activate", headers=ADMIN, json={"version": second}).status_code == 200
    by_second = predict(client, passengers[5:])
    flush(registry_app)
    truth = [1, 0, 1, 1, 0, 0, 1, 0]
    answers = by_first + by_second
    reported = [{"id": a["id"], "survived": t} for a, t in zip(answers, truth, strict=True)]
    assert post_outcomes(client, reported).status_code == 200

    body = client.get("/api/model").get_json()

    def expected(answered: list[dict[str, Any]], labels: list[int]) -> dict[str, Any]:
        right = sum(a["survived"] == t for a, t in zip(answered, labels, strict=True))
        return {"count": len(answered), "correct": right, "accuracy": round(right / len(answered), 6)}

    listed = {v["version"]: v["outcomes"] for v in body["versions"]}
    assert listed == {first: expected(by_first, truth[:5]), second: expected(by_second, truth[5:])}
    assert body["version"] == second and body["outcomes"] == listed[second]


# -- train --with-outcomes ------------------------------------------------------------------------


def read_extract(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_train_with_outcomes_adds_the_served_passengers(
    registry_app: Flask, model_registry: Path, cheap_training: None
) -> None:
    client = registry_app.test_client()
    served = kaggle_rows(TEST_CSV)[:6]
    known = kaggle_rows(TRAIN_CSV)[0]  # a train.csv passenger, sent with the outcome train.csv knows
    label = int(TRAIN_CSV.read_text().splitlines()[1].split(",")[1])
    answers = predict(client, [*served, known])
    again = predict(client, served[:1])  # the same passenger predicted twice: one example
    flush(registry_app)
    truth = [0, 1, 0, 1, 1, 0]
    outcomes = [{"id": a["id"], "survived": t} for a, t in zip(answers[:6], truth, strict=True)]
    outcomes += [{"id": answers[6]["id"], "survived": label}, {"id": again[0]["id"], "survived": truth[0]}]
    assert post_outcomes(client, outcomes).status_code == 200
    runner = registry_app.test_cli_runner()

    result = runner.invoke(args=["train", "--with-outcomes", "--no-activate"])

    assert result.exit_code == 0, result.output
    assert "6 served passenger(s) with a recorded outcome added (2 left out" in result.output
    (new,) = [v for v in registry.versions(model_registry) if v.path.joinpath("outcomes.csv").exists()]
    extract = new.path / "outcomes.csv"
    rows = read_extract(extract)
    # One request's passengers share a time: the extract orders them by time, then by uuid.
    by_id = {int(r["PassengerId"]): r for r in rows}
    assert len(rows) == len(by_id) == len(served)
    assert {i: int(r["Survived"]) for i, r in by_id.items()} == {
        p["PassengerId"]: t for p, t in zip(served, truth, strict=True)
    }
    assert {i: r["Name"] for i, r in by_id.items()} == {p["PassengerId"]: p["Name"] for p in served}
    data = new.card["training_data"]
    assert data["sources"] == [
        {"file": "train.csv", "sha256": sha256_file(TRAIN_CSV), "rows": 891},
        {"file": "outcomes.csv", "sha256": sha256_file(extract), "rows": 6},
    ]
    assert data["rows"] == 897


def test_train_with_outcomes_and_none_recorded_trains_on_train_csv_alone(
    registry_app: Flask, model_registry: Path, cheap_training: None, tmp_path: Path
) -> None:
    lines = TRAIN_CSV.read_text().splitlines(keepends=True)
    data = tmp_path / "train-300.csv"
    data.write_text("".join(lines[:301]))

    result = registry_app.test_cli_runner().invoke(args=["train", "--with-outcomes", "--data", str(data)])

    assert result.exit_code == 0, result.output
    assert "none new; training on train-300.csv alone" in result.output
    card = json.loads((model_registry / str(registry.read_active(model_registry)) / "model.json").read_text())
    assert [s["file"] for s in card["training_data"]["sources"]] == ["train-300.csv"]


def test_train_with_outcomes_mends_a_surrogate_stored_by_an_older_version(
    registry_app: Flask, model_registry: Path, cheap_training: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Before the API refused JSON's "\\ud800" escape it stored such names: the extract, which is
    UTF-8, crashed every `train --with-outcomes` with a UnicodeEncodeError on them."""
    client = registry_app.test_client()
    served = kaggle_rows(TEST_CSV)[:5]
    answers = predict(client, served)
    flush(registry_app)
    with registry_app.app_context():  # what an older version stored from {"Name": "Kelly\\ud800, Mr. James"}
        row = db.session.get(FeatureRow, uuid.UUID(answers[0]["id"]))
        assert row is not None
        row.raw_input = {**row.raw_input, "Name": served[0]["Name"].replace(",", "\ud800,", 1)}
        db.session.commit()
    truth = [0, 1, 0, 1, 1]
    assert post_outcomes(client, [{"id": a["id"], "survived": t} for a, t in zip(answers, truth, strict=True)])
    runner = registry_app.test_cli_runner()

    result = runner.invoke(args=["train", "--with-outcomes", "--no-activate"])

    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "5 served passenger(s) with a recorded outcome added" in result.output
    (new,) = [v for v in registry.versions(model_registry) if v.path.joinpath("outcomes.csv").exists()]
    names = {int(r["PassengerId"]): r["Name"] for r in read_extract(new.path / "outcomes.csv")}
    assert names == {p["PassengerId"]: p["Name"] for p in served} | {892: "Kelly\ufffd, Mr. James"}
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "U+FFFD" in r.getMessage()]
    assert "(PassengerId 892): Name 'Kelly\\ud800, Mr. James' is not valid Unicode text" in warning
