"""The compiled model: the fitted pipeline's probabilities, without the pipeline."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC

from tests.conftest import PASSENGER, TEST_CSV, TRAIN_CSV
from titanic_web import compiled, csvio, features
from titanic_web.compiled import CompiledModel, compile_pipeline
from titanic_web.predictor import Predictor
from titanic_web.training import ARTIFACT_NAME, CANDIDATES, load_training_data

TOLERANCE = 1e-6
Passengers = dict[str, list[dict[str, Any]]]
CANDIDATE_NAMES = [candidate.name for candidate in CANDIDATES]


def read(path: Path) -> list[dict[str, Any]]:
    return csvio.read_passengers(csvio.decode(path.read_bytes()), max_rows=sys.maxsize)


@pytest.fixture(scope="module")
def passengers() -> dict[str, list[dict[str, Any]]]:
    """Every row of train.csv and test.csv, validated as the API validates them."""
    return {"train.csv": read(TRAIN_CSV), "test.csv": read(TEST_CSV)}


@pytest.fixture(scope="module")
def training_data() -> tuple[Any, np.ndarray]:
    return load_training_data(TRAIN_CSV)


@pytest.fixture(scope="module")
def fitted(training_data: tuple[Any, np.ndarray]) -> dict[str, Pipeline]:
    """Each training candidate fitted on train.csv, once for this module."""
    X, y = training_data
    return {candidate.name: candidate.build().fit(X, y) for candidate in CANDIDATES}


@pytest.fixture(scope="module")
def trained(model_dir: Path) -> Pipeline:
    """The pipeline that training chose and wrote."""
    return joblib.load(model_dir / ARTIFACT_NAME)


def expected(pipeline: Pipeline, rows: list[dict[str, Any]]) -> np.ndarray:
    return pipeline.predict_proba(features.raw_frame(rows))


def compile_or_fail(pipeline: Pipeline) -> CompiledModel:
    model = compile_pipeline(pipeline)
    assert model is not None, "a pipeline that training builds should compile"
    return model


def variant(**changes: Any) -> dict[str, Any]:
    return {**PASSENGER, **changes}


# --- the same probabilities as the pipeline -------------------------------------


@pytest.mark.parametrize("data", ["train.csv", "test.csv"])
def test_the_trained_model_gives_the_pipelines_probabilities_on_every_row(
    trained: Pipeline, passengers: Passengers, data: str
) -> None:
    rows = passengers[data]
    want = expected(trained, rows)
    got = compile_or_fail(trained).predict_proba(rows)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)
    # Same additions in the same order: bit for bit, so the Predictor's answers do not change.
    assert compile_or_fail(trained).predict(rows).probabilities.tolist() == want[:, 1].tolist()


@pytest.mark.parametrize("data", ["train.csv", "test.csv"])
@pytest.mark.parametrize("name", CANDIDATE_NAMES)
def test_every_training_candidate_gives_the_pipelines_probabilities_on_every_row(
    fitted: dict[str, Pipeline], passengers: Passengers, name: str, data: str
) -> None:
    pipeline = fitted[name]
    rows = passengers[data]
    got = compile_or_fail(pipeline).predict_proba(rows)
    np.testing.assert_allclose(got, expected(pipeline, rows), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("rows", [compiled.TREE_LOOP - 1, compiled.TREE_LOOP, 2000, 2500])
def test_the_tree_tables_give_the_same_bits_one_tree_at_a_time_or_all_at_once(
    fitted: dict[str, Pipeline], passengers: Passengers, rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TREE_LOOP only chooses how the trees are summed: in the same order, so to the same bits."""
    model = compile_or_fail(fitted["gradient_boosting_compact"])
    everyone = passengers["test.csv"] + passengers["train.csv"]
    XT = model._inputs_t(model.engineer((everyone * (rows // len(everyone) + 1))[:rows]))
    trees = model.estimator.trees
    assert trees.table
    monkeypatch.setattr(compiled, "TREE_LOOP", 1)
    loop = trees.total(XT)
    monkeypatch.setattr(compiled, "TREE_LOOP", 10**9)
    at_once = trees.total(XT)
    np.testing.assert_array_equal(loop, at_once)


@pytest.mark.parametrize("name", CANDIDATE_NAMES)
def test_one_at_a_time_and_in_batches_of_any_size_agree_with_the_pipeline(
    fitted: dict[str, Pipeline], passengers: Passengers, name: str
) -> None:
    """Small and large batches take different code paths; each must give the same numbers."""
    pipeline = fitted[name]
    model = compile_or_fail(pipeline)
    everyone = passengers["test.csv"] + passengers["train.csv"]
    rows = everyone * (compiled.TREE_LOOP // len(everyone) + 1)  # past the largest threshold
    want = expected(pipeline, rows)[:, 1]
    np.testing.assert_allclose(model.predict(rows).probabilities, want, rtol=0, atol=TOLERANCE)
    sizes = sorted(
        {
            1,
            2,
            compiled.ROW_WISE,
            compiled.ROW_WISE + 1,
            compiled.SMALL_BATCH,
            compiled.SMALL_BATCH + 1,
            compiled.ROWS_LOOP - 1,
            compiled.ROWS_LOOP,
            compiled.TREE_LOOP - 1,
        }
    )
    for size in sizes:
        got = model.predict(rows[:size]).probabilities
        np.testing.assert_allclose(got, want[:size], rtol=0, atol=TOLERANCE, err_msg=f"batch of {size}")
    for i in range(0, 40):
        assert abs(model.predict([rows[i]]).probabilities[0] - want[i]) <= TOLERANCE, i


@pytest.mark.parametrize("name", CANDIDATE_NAMES)
def test_model_inputs_are_the_column_steps_output(
    fitted: dict[str, Pipeline], passengers: Passengers, name: str
) -> None:
    pipeline = fitted[name]
    model = compile_or_fail(pipeline)
    rows = passengers["test.csv"]
    want = pipeline[1].transform(pipeline[0].transform(features.raw_frame(rows)))
    engineered = model.engineer(rows)
    np.testing.assert_array_equal(model.inputs(engineered), want)
    np.testing.assert_array_equal(model.inputs(engineered[:3]), want[:3])


def test_engineered_rows_are_the_first_steps_output(trained: Pipeline, passengers: Passengers) -> None:
    rows = passengers["test.csv"]
    frame = trained[0].transform(features.raw_frame(rows))
    got = compile_or_fail(trained).predict(rows).rows
    assert len(got) == len(frame)
    for row, want in zip(got, frame.itertuples(index=False), strict=True):
        assert len(row) == len(features.FEATURES)
        for value, other in zip(row, want, strict=True):
            assert value == other or (value != value and other != other), (row, want)


def test_feature_records_are_what_the_predictor_stores(model_dir: Path, passengers: Passengers) -> None:
    predictor = Predictor.from_dir(model_dir)
    model = compile_or_fail(predictor.pipeline)
    rows = passengers["test.csv"][:60] + [variant(Age=None, Fare=None, Embarked=None, Cabin="T", Name="Nobody")]
    records = [features.to_record(row) for row in model.predict(rows).rows]
    predictions = predictor.predict(rows)
    assert records == [p.features for p in predictions]
    assert [type(v) for v in records[-1].values()] == [type(v) for v in predictions[-1].features.values()]


# --- unknown and missing values --------------------------------------------------


ODD_PASSENGERS = [
    variant(Embarked=None),
    variant(Embarked="X"),  # not a port the schema allows; the encoder ignores it
    variant(Name="John Smith"),  # no title at all: "Unknown"
    variant(Name="Smith, Sir. John"),  # a title training grouped as "Rare"
    variant(Name="Smith, Herr. John", Sex="female"),
    variant(Age=None),
    variant(Fare=None),
    variant(Age=None, Fare=None, Cabin="T", Embarked=None, Ticket=""),
    variant(Cabin="B57 B59", Ticket="PC 17599", Pclass=1),  # a known ticket group
    variant(SibSp=8, Parch=6, Fare=0.0),
]


@pytest.mark.parametrize("name", ["trained", *CANDIDATE_NAMES])
def test_unknown_categories_and_missing_numbers_match_the_pipeline(
    fitted: dict[str, Pipeline], trained: Pipeline, name: str
) -> None:
    pipeline = trained if name == "trained" else fitted[name]
    model = compile_or_fail(pipeline)
    want = expected(pipeline, ODD_PASSENGERS)
    np.testing.assert_allclose(model.predict_proba(ODD_PASSENGERS), want, rtol=0, atol=TOLERANCE)
    for i, passenger in enumerate(ODD_PASSENGERS):  # and alone, through the small-batch path
        assert abs(model.predict([passenger]).probabilities[0] - want[i, 1]) <= TOLERANCE, passenger


def test_an_unknown_category_sets_no_one_hot_column(trained: Pipeline) -> None:
    model = compile_or_fail(trained)
    known, unknown = model.inputs(model.engineer([variant(Embarked="S"), variant(Embarked="X")]))
    onehot = next(c for c in model.categorical if features.FEATURES[c.source] == "Embarked")
    columns = sorted(onehot.positions.values())
    assert known[columns].sum() == 1.0
    assert unknown[columns].sum() == 0.0


def test_missing_numbers_take_the_imputers_statistic(trained: Pipeline) -> None:
    model = compile_or_fail(trained)
    (row,) = model.engineer([variant(Age=None)])
    assert math.isnan(row[features.FEATURES.index("Age")])
    inputs = model.inputs([row])[0]
    age = next(c for c in model.numeric if features.FEATURES[c.source] == "Age")
    assert inputs[age.position] == age.fill
    assert not np.isnan(inputs).any()


def test_no_passengers_give_no_probabilities(trained: Pipeline) -> None:
    scored = compile_or_fail(trained).predict([])
    assert scored.probabilities.shape == (0,)
    assert scored.rows == []


# --- what compiles and what falls back to the pipeline -------------------------


def with_model(training_data: tuple[Any, np.ndarray], model: Any, base: str = "gradient_boosting") -> Pipeline:
    """A training candidate's pipeline with another estimator, fitted on train.csv."""
    X, y = training_data
    pipeline = next(c for c in CANDIDATES if c.name == base).build()
    return pipeline.set_params(model=model).fit(X, y)


SUPPORTED_VARIANTS = {
    "boosting, zero init": lambda: GradientBoostingClassifier(n_estimators=20, init="zero", random_state=0),
    "boosting, stumps": lambda: GradientBoostingClassifier(n_estimators=20, max_depth=1, random_state=0),
    "boosting, deep trees": lambda: GradientBoostingClassifier(n_estimators=20, max_depth=6, random_state=0),
    "forest, unlimited depth": lambda: RandomForestClassifier(n_estimators=15, random_state=0),
    "forest, shallow": lambda: RandomForestClassifier(n_estimators=15, max_depth=2, random_state=0),
    "logistic, unscaled": lambda: LogisticRegression(max_iter=5000),
}


@pytest.mark.parametrize("label", list(SUPPORTED_VARIANTS))
def test_other_settings_of_the_supported_estimators_compile_and_match(
    training_data: tuple[Any, np.ndarray], passengers: Passengers, label: str
) -> None:
    pipeline = with_model(training_data, SUPPORTED_VARIANTS[label]())
    rows = passengers["test.csv"] + ODD_PASSENGERS
    got = compile_or_fail(pipeline).predict_proba(rows)
    np.testing.assert_allclose(got, expected(pipeline, rows), rtol=0, atol=TOLERANCE)


def test_a_scaler_without_centring_compiles_and_matches(
    training_data: tuple[Any, np.ndarray], passengers: Passengers
) -> None:
    X, y = training_data
    pipeline = next(c for c in CANDIDATES if c.name == "logistic_regression").build()
    pipeline.set_params(columns__numeric__scale=StandardScaler(with_mean=False)).fit(X, y)
    rows = passengers["test.csv"]
    got = compile_or_fail(pipeline).predict_proba(rows)
    np.testing.assert_allclose(got, expected(pipeline, rows), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize(
    "make",
    [
        lambda: SVC(),
        lambda: KNeighborsClassifier(),
        lambda: GradientBoostingClassifier(n_estimators=5, loss="exponential", random_state=0),
        lambda: GradientBoostingClassifier(n_estimators=5, init=LogisticRegression(max_iter=1000), random_state=0),
    ],
    ids=["svc", "k-neighbours", "boosting-exponential-loss", "boosting-custom-init"],
)
def test_an_unsupported_estimator_is_not_compiled(training_data: tuple[Any, np.ndarray], make: Any) -> None:
    assert compile_pipeline(with_model(training_data, make())) is None


@pytest.mark.parametrize(
    "params",
    [
        {"columns__categorical": OneHotEncoder(handle_unknown="error", sparse_output=False)},
        {"columns__categorical": OneHotEncoder(handle_unknown="ignore", drop="if_binary", sparse_output=False)},
        {"columns__numeric__impute": SimpleImputer(strategy="median", add_indicator=True)},
        {"columns__numeric": Pipeline([("scale", StandardScaler()), ("impute", SimpleImputer())])},
    ],
    ids=["one-hot-error", "one-hot-drop", "imputer-indicator", "scaler-before-imputer"],
)
def test_unsupported_column_steps_are_not_compiled(
    training_data: tuple[Any, np.ndarray], params: dict[str, Any]
) -> None:
    X, y = training_data
    pipeline = next(c for c in CANDIDATES if c.name == "random_forest").build()
    pipeline.set_params(model=RandomForestClassifier(n_estimators=3, random_state=0), **params)
    assert compile_pipeline(pipeline.fit(X, y)) is None


def test_other_pipeline_shapes_are_not_compiled(fitted: dict[str, Pipeline]) -> None:
    pipeline = fitted["gradient_boosting"]
    assert compile_pipeline(pipeline[1:]) is None  # no feature step
    assert compile_pipeline(pipeline[:2]) is None  # no estimator
    assert compile_pipeline(pipeline[-1]) is None
    assert compile_pipeline(next(c for c in CANDIDATES).build()) is None  # never fitted
    assert compile_pipeline(None) is None
