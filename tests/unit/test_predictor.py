"""The predictor: loads only the artifact its card vouches for, and predicts in order."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSENGER, TEST_CSV
from tests.unit.test_registry import MISSING_CLASS, MISSING_MODULE, make_unloadable
from titanic_web import csvio, features
from titanic_web.predictor import ModelError, Prediction, Predictor
from titanic_web.training import ARTIFACT_NAME, CARD_NAME


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> Predictor:
    return Predictor.from_dir(model_dir)


@pytest.fixture(scope="module")
def test_rows() -> list[dict[str, Any]]:
    return csvio.read_passengers(csvio.decode(TEST_CSV.read_bytes()), max_rows=sys.maxsize)


@pytest.fixture
def model_copy(model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the trained model that a test may damage."""
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the artifact is unpickled."""

    def load(*args: Any, **kwargs: Any) -> Any:
        pytest.fail("joblib.load was called on an artifact that should have been refused")

    monkeypatch.setattr("titanic_web.predictor.joblib.load", load)


def test_from_dir_loads_the_model_and_its_card(predictor: Predictor, model_dir: Path) -> None:
    card = json.loads((model_dir / CARD_NAME).read_text())
    assert predictor.version == card["version"]
    assert predictor.card == card
    assert predictor.threshold == 0.5
    assert isinstance(predictor.pipeline[0], features.PassengerFeatures)


def test_predict_one_returns_one_prediction(predictor: Predictor) -> None:
    one = predictor.predict(PASSENGER)
    assert isinstance(one, Prediction)
    assert 0.0 <= one.probability <= 1.0
    assert one.survived == int(one.probability >= 0.5)
    assert type(one.probability) is float and type(one.survived) is int


def test_predict_a_list_of_one_is_the_same_prediction(predictor: Predictor) -> None:
    many = predictor.predict([PASSENGER])
    assert isinstance(many, list) and len(many) == 1
    assert many[0] == predictor.predict(PASSENGER)


def test_predict_nothing_is_nothing(predictor: Predictor) -> None:
    assert predictor.predict([]) == []


def test_prediction_features_are_the_engineered_ones_in_plain_python(predictor: Predictor) -> None:
    one = predictor.predict({**PASSENGER, "Age": None})
    assert list(one.features) == list(features.FEATURES)
    assert one.features["Age"] is None  # missing, not NaN: it goes to JSON and the database
    assert one.features["Title"] == "Mr"
    assert one.features["Pclass"] == 3.0 and type(one.features["Pclass"]) is float
    json.dumps(one.features, allow_nan=False)


def test_predict_all_of_test_csv_in_order(predictor: Predictor, test_rows: list[dict[str, Any]]) -> None:
    predictions = predictor.predict(test_rows)
    assert len(test_rows) == 418
    assert len(predictions) == 418
    for row, prediction in zip(test_rows, predictions, strict=True):
        assert 0.0 <= prediction.probability <= 1.0
        assert prediction.survived == int(prediction.probability >= 0.5)
        # each answer belongs to the row at its position
        assert prediction.features["Pclass"] == row["Pclass"]
        assert prediction.features["Age"] == row["Age"]
        assert prediction.features["Fare"] == row["Fare"]
    # a batch answers each passenger as if it had been sent alone
    for i in range(0, 418, 37):
        assert predictor.predict(test_rows[i]) == predictions[i], i
    assert 0 < sum(p.survived for p in predictions) < 418


def test_probabilities_are_the_pipelines(predictor: Predictor, test_rows: list[dict[str, Any]]) -> None:
    expected = predictor.pipeline.predict_proba(features.raw_frame(test_rows))[:, 1]
    got = [p.probability for p in predictor.predict(test_rows)]
    assert got == [float(p) for p in expected]


def test_a_first_class_woman_is_likelier_to_survive_than_a_third_class_man(predictor: Predictor) -> None:
    man = {**PASSENGER, "Pclass": 3, "Sex": "male", "Name": "Kelly, Mr. James"}
    woman = {**PASSENGER, "Pclass": 1, "Sex": "female", "Name": "Kelly, Mrs. James"}
    p_man, p_woman = (p.probability for p in predictor.predict([man, woman]))
    assert p_woman > p_man


# --- refusing to load ---------------------------------------------------------


def test_a_tampered_artifact_is_refused_before_unpickling(model_copy: Path, no_unpickling: None) -> None:
    artifact = model_copy / ARTIFACT_NAME
    blob = bytearray(artifact.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    artifact.write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="does not match its card") as info:
        Predictor.from_dir(model_copy)
    assert "sha256" in str(info.value)
    assert "retrain" in str(info.value)


def test_an_artifact_from_another_scikit_learn_is_refused(model_copy: Path, no_unpickling: None) -> None:
    card_path = model_copy / CARD_NAME
    card = json.loads(card_path.read_text())
    card["libraries"]["scikit-learn"] = "0.0.1"  # the artifact is untouched: its sha256 still matches
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="retrain") as info:
        Predictor.from_dir(model_copy)
    assert "scikit-learn 0.0.1" in str(info.value)


@pytest.mark.parametrize(
    ("blob", "error"),
    [
        (MISSING_MODULE, "ModuleNotFoundError: No module named 'no_such_module_for_titanic'"),
        (MISSING_CLASS, "AttributeError: module 'titanic_web.features' has no attribute 'NoSuchTransformer'"),
        (b"not a pickle", "KeyError"),
        (b"", "EOFError"),
    ],
    ids=["missing-module", "missing-class", "not-a-pickle", "empty"],
)
def test_an_artifact_that_fails_to_unpickle_is_refused(model_copy: Path, blob: bytes, error: str) -> None:
    make_unloadable(model_copy, blob)  # its card vouches for it: the sha256 matches
    with pytest.raises(ModelError, match="cannot be loaded here") as info:
        Predictor.from_dir(model_copy)
    message = str(info.value)
    assert error in message
    assert f"numpy {json.loads((model_copy / CARD_NAME).read_text())['libraries']['numpy']}" in message
    assert "install those versions, or retrain it with `flask --app titanic_web train`" in message


@pytest.mark.parametrize("missing", [None, ARTIFACT_NAME, CARD_NAME])
def test_a_missing_model_says_how_to_train_one(model_copy: Path, tmp_path: Path, missing: str | None) -> None:
    if missing is None:
        directory = tmp_path / "nowhere"
    else:
        directory = model_copy
        (model_copy / missing).unlink()
    with pytest.raises(ModelError, match="run `flask --app titanic_web train`"):
        Predictor.from_dir(directory)


@pytest.mark.parametrize(
    "damage",
    [
        lambda card: "{not json",
        lambda card: json.dumps({k: v for k, v in card.items() if k != "artifact_sha256"}),
        lambda card: json.dumps({k: v for k, v in card.items() if k != "version"}),
        lambda card: json.dumps({**card, "libraries": None}),
        lambda card: json.dumps([card]),
    ],
    ids=["not-json", "no-sha256", "no-version", "no-libraries", "not-an-object"],
)
def test_an_unreadable_card_is_refused(model_copy: Path, no_unpickling: None, damage: Any) -> None:
    card_path = model_copy / CARD_NAME
    card_path.write_text(damage(json.loads(card_path.read_text())))
    with pytest.raises(ModelError, match="unreadable.*retrain"):
        Predictor.from_dir(model_copy)


def test_trained_model_is_served_by_its_compiled_form_with_the_same_answers(model_dir: Path) -> None:
    from titanic_web.csvio import decode, read_passengers

    compiled = Predictor.from_dir(model_dir)
    assert compiled.compiled is not None, "the trained estimator should compile"
    through_pipeline = Predictor.from_dir(model_dir)
    through_pipeline.compiled = None
    passengers = read_passengers(decode(TEST_CSV.read_bytes()), max_rows=10_000)
    fast = compiled.predict(passengers)
    slow = through_pipeline.predict(passengers)
    assert [p.survived for p in fast] == [p.survived for p in slow]
    assert max(abs(a.probability - b.probability) for a, b in zip(fast, slow, strict=True)) <= 1e-6
    assert [p.features for p in fast] == [p.features for p in slow]
