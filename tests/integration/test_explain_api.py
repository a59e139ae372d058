"""/api/predict?explain=true: every prediction carries the features that pushed it up or down."""

from __future__ import annotations

import math
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from scipy.special import expit

from tests.conftest import PASSENGER, TEST_CSV, count_rows
from tests.integration.helpers import kaggle_rows
from titanic_web import features, get_service


def _check(explanation: dict[str, Any], probability: float) -> None:
    total = explanation["base"] + math.fsum(c["contribution"] for c in explanation["contributions"])
    assert total == pytest.approx(explanation["output"], abs=1e-5)
    value = expit(explanation["output"]) if explanation["scale"] == "log-odds" else explanation["output"]
    assert value == pytest.approx(probability, abs=1e-4)  # the answer's probability is rounded to 4 places
    sizes = [abs(c["contribution"]) for c in explanation["contributions"]]
    assert sizes == sorted(sizes, reverse=True)
    assert {c["feature"] for c in explanation["contributions"]} <= set(features.FEATURES)


def test_explain_true_adds_a_faithful_explanation_to_each_prediction(client: FlaskClient) -> None:
    woman = {**PASSENGER, "Sex": "female", "Name": "Kelly, Mrs. James", "Pclass": 1}
    response = client.post("/api/predict?explain=true", json=[PASSENGER, woman])
    assert response.status_code == 200, response.get_data(as_text=True)
    predictions = response.get_json()["predictions"]
    assert [list(p) for p in predictions] == [["id", "PassengerId", "survived", "probability", "explanation"]] * 2
    for p in predictions:
        _check(p["explanation"], p["probability"])
    sex = [next(c for c in p["explanation"]["contributions"] if c["feature"] == "Sex") for p in predictions]
    assert [s["value"] for s in sex] == ["male", "female"]
    assert sex[0]["contribution"] < 0 < sex[1]["contribution"]


def test_explanations_in_a_batch_bigger_than_a_chunk(app: Flask, client: FlaskClient) -> None:
    app.config["BATCH_CHUNK_ROWS"] = 100
    rows = kaggle_rows(TEST_CSV)
    response = client.post("/api/predict?explain=1", json=rows)
    assert response.status_code == 200
    predictions = response.get_json()["predictions"]
    assert len(predictions) == len(rows) == 418
    for p in predictions:
        _check(p["explanation"], p["probability"])
    assert count_rows(app) == (418, 418)  # explaining changes nothing about what is stored


@pytest.mark.parametrize("value", ["false", "0", "no", ""])
def test_explain_false_answers_as_usual(client: FlaskClient, value: str) -> None:
    response = client.post(f"/api/predict?explain={value}", json=PASSENGER)
    assert response.status_code == 200
    assert list(response.get_json()["predictions"][0]) == ["id", "PassengerId", "survived", "probability"]


def test_an_unreadable_explain_value_is_a_400_naming_it_and_stores_nothing(app: Flask, client: FlaskClient) -> None:
    response = client.post("/api/predict?explain=maybe", json=PASSENGER)
    assert response.status_code == 400
    assert "explain" in response.get_json()["message"] and "maybe" in response.get_json()["message"]
    assert count_rows(app) == (0, 0)


def test_explain_with_a_csv_answer_is_refused(app: Flask, client: FlaskClient) -> None:
    response = client.post("/api/predict?explain=true", json=PASSENGER, headers={"Accept": "text/csv"})
    assert response.status_code == 400
    assert "application/json" in response.get_json()["message"]
    assert count_rows(app) == (0, 0)


def test_a_model_that_cannot_explain_answers_501(app: Flask, client: FlaskClient) -> None:
    get_service(app).predictor.compiled = None  # the pipeline still predicts; nothing to explain with
    response = client.post("/api/predict?explain=true", json=PASSENGER)
    assert response.status_code == 501
    assert "cannot explain" in response.get_json()["message"]
    assert client.post("/api/predict", json=PASSENGER).status_code == 200
