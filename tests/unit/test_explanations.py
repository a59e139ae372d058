"""Explanations are faithful: the base plus the contributions is the model's output, for every passenger."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.special import expit

from tests.conftest import PASSENGER, TEST_CSV, TRAIN_CSV
from titanic_web import features
from titanic_web.compiled import compile_pipeline
from titanic_web.predictor import ModelError, Predictor
from titanic_web.training import CANDIDATES, load_training_data


@pytest.fixture(scope="module")
def training() -> tuple[Any, np.ndarray]:
    return load_training_data(TRAIN_CSV)


@pytest.fixture(scope="module", params=[c.name for c in CANDIDATES])
def fitted(request: pytest.FixtureRequest, training: tuple[Any, np.ndarray]) -> Any:
    """Each kind of model training may choose, fitted on all of train.csv."""
    X, y = training
    candidate = next(c for c in CANDIDATES if c.name == request.param)
    return candidate.build().fit(X, y)


def passengers() -> list[dict[str, Any]]:
    import pandas as pd

    out = []
    for path in (TRAIN_CSV, TEST_CSV):
        frame = pd.read_csv(path)
        out += frame.astype(object).where(frame.notna(), None).to_dict("records")
    return out


def test_base_plus_contributions_is_the_models_output_on_every_row(fitted: Any) -> None:
    compiled = compile_pipeline(fitted)
    assert compiled is not None
    rows = compiled.engineer(passengers())
    explanations = compiled.explain(rows)
    expected = fitted.predict_proba(features.raw_frame(passengers()))[:, 1]
    assert len(explanations) == len(rows) == len(expected)
    for explanation, p in zip(explanations, expected.tolist(), strict=True):
        total = explanation.base + math.fsum(c.contribution for c in explanation.contributions)
        assert total == pytest.approx(explanation.output, abs=1e-9)
        probability = expit(explanation.output) if explanation.scale == "log-odds" else explanation.output
        assert probability == pytest.approx(p, abs=1e-6)


def test_contributions_come_most_important_first_and_name_every_feature_the_model_uses(fitted: Any) -> None:
    compiled = compile_pipeline(fitted)
    assert compiled is not None
    steps = fitted.named_steps["columns"].transformers_
    used = {name for _, step, columns in steps if step != "drop" for name in columns}
    for explanation in compiled.explain(compiled.engineer(passengers()[:50])):
        sizes = [abs(c.contribution) for c in explanation.contributions]
        assert sizes == sorted(sizes, reverse=True)
        assert {c.feature for c in explanation.contributions} == used


def test_the_base_is_the_same_for_every_passenger_and_the_contributions_differ(fitted: Any) -> None:
    compiled = compile_pipeline(fitted)
    assert compiled is not None
    explanations = compiled.explain(compiled.engineer(passengers()))
    assert len({e.base for e in explanations}) == 1
    assert len({e.contributions for e in explanations}) > 100


def test_sex_pushes_women_up_and_men_down(fitted: Any) -> None:
    """Not decorative: on train.csv, being a woman raises the output and being a man lowers it, on average."""
    compiled = compile_pipeline(fitted)
    assert compiled is not None
    explanations = compiled.explain(compiled.engineer(passengers()[:891]))
    by_sex: dict[str, list[float]] = {"female": [], "male": []}
    for e in explanations:
        sex = next(c for c in e.contributions if c.feature == "Sex")
        by_sex[sex.value].append(sex.contribution)
    assert np.mean(by_sex["female"]) > 0 > np.mean(by_sex["male"])


def test_the_served_model_explains_through_the_predictor(model_dir: Path) -> None:
    predictor = Predictor.from_dir(model_dir)
    probabilities, rows = predictor.score([PASSENGER, {**PASSENGER, "Sex": "female", "Name": "Kelly, Mrs. J"}])
    explanations = predictor.explain(rows)
    assert [e.as_dict()["scale"] for e in explanations] in (["log-odds"] * 2, ["probability"] * 2)
    for e, p in zip(explanations, probabilities.tolist(), strict=True):
        assert (expit(e.output) if e.scale == "log-odds" else e.output) == pytest.approx(p, abs=1e-9)
        answer = e.as_dict()
        assert answer["contributions"][0]["feature"] in features.FEATURES
        assert all(set(c) == {"feature", "value", "contribution"} for c in answer["contributions"])


def test_a_model_without_a_compiled_form_says_it_cannot_explain(model_dir: Path) -> None:
    predictor = Predictor.from_dir(model_dir)
    predictor.compiled = None
    with pytest.raises(ModelError, match="cannot explain"):
        predictor.explain([])
