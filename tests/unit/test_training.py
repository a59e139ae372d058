"""Training: the model card vouches for the artifact, and the same data gives the same bytes."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.base import BaseEstimator, ClassifierMixin

from tests.conftest import TRAIN_CSV
from titanic_web import features
from titanic_web.config import PROJECT_ROOT
from titanic_web.training import ARTIFACT_NAME, CARD_NAME, TrainingError, load_training_data, sha256_file, train


@pytest.fixture(scope="module")
def card(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / CARD_NAME).read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cross_validated_accuracy_has_a_floor(card: dict[str, Any]) -> None:
    cv = card["cv"]
    assert cv["folds"] == 5 and cv["stratified"] is True and cv["seed"] == 0
    assert cv["accuracy_mean"] >= 0.84  # the floor, reached with the travelling-group features
    assert 0.0 < cv["accuracy_std"] < 0.05
    assert cv["roc_auc_mean"] >= 0.85
    assert 0.0 < cv["roc_auc_std"] < 0.05


def test_the_group_features_lift_accuracy_above_the_same_model_without_them() -> None:
    """The travelling-group features earn their place: without them the chosen pipeline scores lower."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    from titanic_web.training import CANDIDATES, COMPACT_CATEGORICAL, COMPACT_NUMERIC, FOLDS, SEED, _pipeline

    X, y = load_training_data(TRAIN_CSV)
    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=SEED)
    compact = next(c for c in CANDIDATES if c.name == "gradient_boosting_compact")
    model = compact.build().named_steps["model"]
    without = [name for name in COMPACT_NUMERIC if not name.startswith("WCGroup")]
    with_groups = cross_val_score(compact.build(), X, y, cv=folds).mean()
    without_groups = cross_val_score(
        _pipeline(model, numeric=without, categorical=COMPACT_CATEGORICAL), X, y, cv=folds
    ).mean()
    assert with_groups > without_groups + 0.005, (with_groups, without_groups)


class _Spy(ClassifierMixin, BaseEstimator):
    """A stand-in model that keeps the inputs it is asked to score (cross_validate clones it)."""

    seen: list[Any] = []

    def fit(self, X: Any, y: Any) -> _Spy:
        self.classes_ = np.array([0, 1])
        return self

    def predict(self, X: Any) -> Any:
        _Spy.seen.append(np.array(X, dtype=float))
        return np.zeros(len(X), dtype=int)


def test_cross_validation_computes_group_features_inside_each_fold() -> None:
    """No leakage: shuffling a held-out fold's labels does not change the features it is scored with.

    Runs cross_validate, as training does, on the real pipeline with a spy in
    the model's place, once with the true labels and once with one fold's
    labels shuffled, and compares what the spy was shown for that fold.
    """
    from sklearn.model_selection import StratifiedKFold, cross_validate

    from titanic_web.training import COMPACT_CATEGORICAL, COMPACT_NUMERIC, FOLDS, SEED, _pipeline

    X, y = load_training_data(TRAIN_CSV)
    splits = list(StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=SEED).split(X, y))
    rng = np.random.default_rng(7)

    def shown(labels: Any) -> list[Any]:
        _Spy.seen = []
        pipeline = _pipeline(_Spy(), numeric=COMPACT_NUMERIC, categorical=COMPACT_CATEGORICAL)
        cross_validate(pipeline, X, labels, cv=splits, scoring="accuracy")
        return _Spy.seen

    truth = shown(y)
    group_columns = [COMPACT_NUMERIC.index("WCGroupLived"), COMPACT_NUMERIC.index("WCGroupDied")]
    assert any(block[:, group_columns].any() for block in truth), "the group features are in play"
    for k, (_train_index, held_out) in enumerate(splits):
        shuffled = y.copy()
        shuffled[held_out] = rng.permutation(y[held_out])
        assert (shuffled[held_out] != y[held_out]).any()
        assert np.array_equal(shown(shuffled)[k], truth[k]), f"fold {k}'s features depend on its own labels"
    # The check can fail: labels in the training folds do reach the held-out features.
    flipped = y.copy()
    flipped[splits[0][0]] = 1 - y[splits[0][0]]
    assert not np.array_equal(shown(flipped)[0], truth[0])


def test_the_chosen_candidate_has_the_best_accuracy(card: dict[str, Any]) -> None:
    scores = card["candidates"]
    best = max(scores.values(), key=lambda s: s["accuracy_mean"])
    assert scores[card["chosen"]]["accuracy_mean"] == best["accuracy_mean"]
    assert {k: card["cv"][k] for k in best} == scores[card["chosen"]]


def test_the_card_vouches_for_the_artifact_bytes(card: dict[str, Any], model_dir: Path) -> None:
    actual = sha256(model_dir / ARTIFACT_NAME)
    assert card["artifact"] == ARTIFACT_NAME
    assert card["artifact_sha256"] == actual
    assert card["version"] == actual[:12]


def test_the_card_names_the_training_data(card: dict[str, Any]) -> None:
    data = card["training_data"]
    train_csv = pd.read_csv(TRAIN_CSV)
    assert data["file"] == "train.csv"
    assert data["sha256"] == sha256(TRAIN_CSV)
    assert data["rows"] == len(train_csv) == 891
    assert data["survival_rate"] == pytest.approx(train_csv["Survived"].mean(), abs=1e-6)


def test_the_card_names_the_libraries(card: dict[str, Any]) -> None:
    libraries = card["libraries"]
    assert libraries["scikit-learn"] == sklearn.__version__
    assert {"python", "numpy", "pandas", "joblib"} <= set(libraries)


def test_the_card_describes_the_fitted_pipeline(card: dict[str, Any], model_dir: Path) -> None:
    pipeline = joblib.load(model_dir / ARTIFACT_NAME)
    model = pipeline.named_steps["model"]
    assert card["estimator"] == type(model).__name__
    assert card["params"]  # scalar hyperparameters, as the estimator reports them
    assert card["params"] == {k: v for k, v in model.get_params().items() if k in card["params"]}
    fitted = pipeline.named_steps["columns"].transformers_
    used = [c for name, _, cols in fitted if name != "remainder" for c in cols]
    assert card["features"] == used
    assert card["features"] and set(card["features"]) <= set(features.FEATURES)
    assert card["threshold"] == 0.5


def test_the_card_says_when_and_how_long(card: dict[str, Any]) -> None:
    assert card["training_seconds"] > 0
    assert datetime.fromisoformat(card["trained_at"]).tzinfo is not None


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x" * (3 << 20))  # spans several read blocks
    assert sha256_file(path) == hashlib.sha256(b"x" * (3 << 20)).hexdigest()


TRAIN_ONCE = (
    "import sys\n"
    "from pathlib import Path\n"
    "from titanic_web.predictor import Predictor\n"
    "from titanic_web.training import train\n"
    "if len(sys.argv) > 3:\n"
    "    Predictor.from_dir(Path(sys.argv[3]))  # as `flask train` does: the app loads the current model first\n"
    "print(train(data_path=Path(sys.argv[1]), out_dir=Path(sys.argv[2])).card['version'])\n"
)


def test_training_is_deterministic_across_processes(tmp_path: Path, model_dir: Path, card: dict[str, Any]) -> None:
    """Two fresh interpreters with different hash seeds write the same artifact bytes, one of
    them having loaded a model first (which once changed which strings pickle shared)."""
    runs = {}
    for seed, loaded in (("1", []), ("4242", [str(model_dir)])):
        out = tmp_path / f"seed{seed}"
        runs[seed] = (
            out,
            subprocess.Popen(
                [sys.executable, "-c", TRAIN_ONCE, str(TRAIN_CSV), str(out), *loaded],
                cwd=PROJECT_ROOT,
                env={**os.environ, "PYTHONHASHSEED": seed},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
    versions = []
    for _out, process in runs.values():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        versions.append(stdout.strip())
    (first, _), (second, _) = runs.values()
    assert (first / ARTIFACT_NAME).read_bytes() == (second / ARTIFACT_NAME).read_bytes()
    assert versions[0] == versions[1] == json.loads((first / CARD_NAME).read_text())["version"]
    # ... and the same bytes as the model trained in this process
    assert (first / ARTIFACT_NAME).read_bytes() == (model_dir / ARTIFACT_NAME).read_bytes()
    assert versions[0] == card["version"]


# --- unusable training data ----------------------------------------------------


HEADER = "PassengerId,Survived,Pclass,Name,Sex,Age,SibSp,Parch,Ticket,Fare,Cabin,Embarked\n"


def a_row(survived: str) -> str:
    return f'1,{survived},3,"Braund, Mr. Owen Harris",male,22,1,0,A/5 21171,7.25,,S\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HEADER.replace("Survived,", "") + a_row("0").replace("1,0,", "1,", 1), "missing column(s) Survived"),
        (HEADER.replace(",Embarked", "") + a_row("0").replace(",S\n", "\n"), "missing column(s) Embarked"),
        (HEADER + a_row("0") + a_row("2"), "every Survived value must be 0 or 1"),
        (HEADER + a_row("0") + a_row("yes"), "every Survived value must be 0 or 1"),
        (HEADER + a_row("0") + a_row(""), "every Survived value must be 0 or 1"),
        (HEADER + a_row("0") + a_row("-1"), "every Survived value must be 0 or 1"),
    ],
    ids=["no-survived", "no-embarked", "label-2", "label-text", "label-missing", "label-negative"],
)
def test_unusable_training_data_is_a_training_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "train.csv"
    path.write_text(text)
    with pytest.raises(TrainingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(data_path=path, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_training_data_is_a_training_error(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="training data not found"):
        train(data_path=tmp_path / "nope.csv", out_dir=tmp_path / "out")


@pytest.mark.parametrize("text", ["", HEADER], ids=["empty-file", "header-only"])
def test_training_data_without_passengers_is_a_training_error(tmp_path: Path, text: str) -> None:
    """`flask train` turns only TrainingError into a clean message; anything else is a traceback."""
    path = tmp_path / "train.csv"
    path.write_text(text)
    with pytest.raises(TrainingError):
        train(data_path=path, out_dir=tmp_path / "out")


def test_load_training_data_returns_raw_columns_and_labels() -> None:
    X, y = load_training_data(TRAIN_CSV)
    assert list(X.columns) == list(features.RAW_COLUMNS)
    assert len(X) == len(y) == 891
    assert set(y) == {0, 1}
    assert X["Age"].isna().sum() == pd.read_csv(TRAIN_CSV)["Age"].isna().sum()


@pytest.mark.parametrize(
    ("column", "cell"),
    [
        ("Age", "unknown"),
        ("Age", "NA"),  # only an empty cell is unknown, as when serving
        ("Age", "nan"),
        ("Age", "inf"),
        ("Pclass", "first"),
        ("Fare", '"7,25"'),
        ("Fare", "1e400"),
    ],
)
def test_a_cell_that_is_not_a_number_is_a_training_error_naming_its_line(
    tmp_path: Path, column: str, cell: str
) -> None:
    """It crashed `flask train` with a traceback from inside the features (could not convert...)."""
    good = TRAIN_CSV.read_text().splitlines(keepends=True)[1:12]
    row = good[5].split(",")
    at = HEADER.split(",").index(column)
    row[at + 1 if at > HEADER.split(",").index("Name") else at] = cell  # the quoted Name holds one comma
    # A quoted name over two lines and a blank line come first: the line is the file's, not the row's.
    multiline = good[0].replace('"Braund, Mr. Owen Harris"', '"Braund,\nMr. Owen Harris"')
    path = tmp_path / "train.csv"
    path.write_text(HEADER + multiline + "".join(good[1:3]) + "\n" + "".join(good[3:5]) + ",".join(row) + good[6])

    with pytest.raises(TrainingError) as raised:
        train(data_path=path, out_dir=tmp_path / "out")

    shown = cell.strip('"')
    assert str(raised.value) == f"{path}: line 9: {column} must be a number (an empty cell if unknown), got {shown!r}"
    assert not (tmp_path / "out").exists()


def test_every_bad_cell_of_a_column_is_counted(tmp_path: Path) -> None:
    lines = TRAIN_CSV.read_text().splitlines(keepends=True)
    path = tmp_path / "train.csv"
    path.write_text("".join(lines[:3]) + "".join(line.replace(",35.0,", ",unknown,") for line in lines[3:40]))
    ages = [line for line in lines[3:40] if ",35.0," in line]
    assert len(ages) >= 2

    with pytest.raises(TrainingError, match=rf"line 5: Age .*got 'unknown'; {len(ages) - 1} more row\(s\)"):
        load_training_data(path)


def test_texts_that_pandas_would_take_for_gaps_stay_texts(tmp_path: Path) -> None:
    """Serving reads a ticket "NA" or a cabin "None" as text, and only an empty cell as unknown:
    so does training (pandas' default turned "NA", "None", "null", "N/A"... into NaN)."""
    lines = TRAIN_CSV.read_text().splitlines(keepends=True)
    path = tmp_path / "train.csv"
    rows = [
        '1,0,3,"Null",male,22,1,0,NA,7.25,None,S\n',
        '2,1,1,"Cumings, Mrs. John",female,38,1,0,N/A,71.28,null,\n',
        "3,1,3,,female,,0,0,,7.92,,NA\n",
    ]
    path.write_text(lines[0] + "".join(rows) + "".join(lines[4:40]))

    X, _ = load_training_data(path)

    assert X.loc[0, ["Name", "Ticket", "Cabin", "Embarked"]].tolist() == ["Null", "NA", "None", "S"]
    assert X.loc[1, ["Ticket", "Cabin"]].tolist() == ["N/A", "null"]
    assert pd.isna(X.loc[1, "Embarked"]) and X.loc[2, "Embarked"] == "NA"
    assert [pd.isna(X.loc[2, c]) for c in ("Name", "Age", "Ticket", "Cabin")] == [True] * 4


def test_a_padded_sex_trains_the_same_model(tmp_path: Path) -> None:
    """A Sex padded as some spreadsheets pad it (" male", "female ") is the sex serving knows: the
    same features, not categories of their own nor a woman's own label in her group's features."""
    from titanic_web.training import CANDIDATES

    with TRAIN_CSV.open(newline="") as fh:
        rows = list(csv.reader(fh))
    sex = rows[0].index("Sex")
    for i, row in enumerate(rows[1:]):
        row[sex] = (" {}", "{} ", " {} ")[i % 3].format(row[sex])
    padded = tmp_path / "train.csv"
    with padded.open("w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    X, y = load_training_data(TRAIN_CSV)
    X_padded, y_padded = load_training_data(padded)
    assert X_padded["Sex"].str.strip().equals(X["Sex"]) and not X_padded["Sex"].equals(X["Sex"])

    engineered = features.PassengerFeatures().fit_transform(X_padded, y_padded)

    assert engineered.equals(features.PassengerFeatures().fit_transform(X, y))
    cheap = CANDIDATES[:1]
    versions = [
        train(data_path=data, out_dir=tmp_path / name, candidates=cheap).card["version"]
        for name, data in (("plain", TRAIN_CSV), ("padded", padded))
    ]
    assert versions[0] == versions[1]
