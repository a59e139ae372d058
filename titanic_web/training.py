"""Training: data -> cross-validated candidates -> fitted model -> artifact + model card.

Everything is seeded, single-threaded and ordered, so the same data and code
give the same artifact bytes and therefore the same model version.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_validate
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from titanic_web import features

ARTIFACT_NAME = "model.joblib"
CARD_NAME = "model.json"
SEED = 0
FOLDS = 5

#: The numeric features of the compact candidates: the ones that carry signal
#: on this data without letting the trees chase noise in SibSp/Parch/raw Fare.
COMPACT_NUMERIC = (
    "Pclass",
    "Age",
    "FamilySize",
    "IsAlone",
    "CabinKnown",
    "FarePerPerson",
    "TicketGroupSize",
    "WCGroupLived",
    "WCGroupDied",
)
COMPACT_CATEGORICAL = ("Sex", "Title", "Embarked")


class TrainingError(Exception):
    """The training data cannot be used (missing file, columns or labels)."""


@dataclass(frozen=True)
class Candidate:
    """A named way to build an unfitted pipeline."""

    name: str
    build: Callable[[], Pipeline]


def _pipeline(model: Any, *, numeric: Sequence[str], categorical: Sequence[str], scale: bool = False) -> Pipeline:
    numeric_steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
    if scale:
        numeric_steps.append(("scale", StandardScaler()))
    columns = ColumnTransformer(
        [
            ("numeric", Pipeline(numeric_steps), list(numeric)),
            ("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False), list(categorical)),
        ]
    )
    return Pipeline([("features", features.PassengerFeatures()), ("columns", columns), ("model", model)])


CANDIDATES: tuple[Candidate, ...] = (
    Candidate(
        "logistic_regression",
        lambda: _pipeline(
            LogisticRegression(max_iter=1000),
            numeric=features.NUMERIC_FEATURES,
            categorical=features.CATEGORICAL_FEATURES,
            scale=True,
        ),
    ),
    Candidate(
        "random_forest",
        lambda: _pipeline(
            RandomForestClassifier(n_estimators=300, max_depth=6, min_samples_leaf=3, random_state=SEED),
            numeric=COMPACT_NUMERIC,
            categorical=COMPACT_CATEGORICAL,
        ),
    ),
    Candidate(
        "gradient_boosting",
        lambda: _pipeline(
            GradientBoostingClassifier(
                n_estimators=200, learning_rate=0.05, max_depth=3, subsample=0.8, random_state=SEED
            ),
            numeric=features.NUMERIC_FEATURES,
            categorical=features.CATEGORICAL_FEATURES,
        ),
    ),
    Candidate(
        "gradient_boosting_compact",
        lambda: _pipeline(
            GradientBoostingClassifier(
                n_estimators=200, learning_rate=0.05, max_depth=3, subsample=0.8, random_state=SEED
            ),
            numeric=COMPACT_NUMERIC,
            categorical=COMPACT_CATEGORICAL,
        ),
    ),
)


@dataclass(frozen=True)
class TrainResult:
    """What `train` wrote."""

    artifact_path: Path
    card_path: Path
    card: dict[str, Any]


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: Read as text whatever the cells look like: a file whose tickets are all digits must not
#: turn "0123" into 123 (or 330911 into 330911.0 next to a gap), or tickets stop matching.
_TEXT_COLUMNS = {name: str for name in ("Name", "Sex", "Ticket", "Cabin", "Embarked")}

#: The columns whose every cell must be a number or empty. SibSp and Parch are not checked:
#: an unreadable head count counts as 0 (features._count), as it always has.
_NUMBER_COLUMNS = ("Pclass", "Age", "Fare")


def _read_training_file(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise TrainingError(f"training data not found: {path}")
    try:
        # Only an empty cell is missing, as in serving: pandas' default would also read
        # "NA", "None", "null" or "nan" as missing, a ticket "NA" or a cabin "None" included.
        frame = pd.read_csv(path, dtype=_TEXT_COLUMNS, keep_default_na=False, na_values=[""])
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise TrainingError(f"{path}: not a readable CSV file ({exc})") from None
    missing = [c for c in ("Survived", *features.RAW_COLUMNS) if c not in frame.columns]
    if missing:
        raise TrainingError(f"{path}: missing column(s) {', '.join(missing)}")
    if frame.empty:
        raise TrainingError(f"{path}: no passengers, only a header")
    labels = frame["Survived"]
    if labels.dtype == bool or labels.isna().any() or not labels.isin([0, 1]).all():
        raise TrainingError(f"{path}: every Survived value must be 0 or 1")
    for column in _NUMBER_COLUMNS:
        _check_numbers(path, frame, column)
    return frame


def _check_numbers(path: Path, frame: pd.DataFrame, column: str) -> None:
    """Every cell of the column is a finite number or empty (unknown).

    :raise TrainingError: naming the first other cell, by its line in the file.
    """
    cells = frame[column]
    numbers = cells if cells.dtype.kind in "iuf" else pd.to_numeric(cells, errors="coerce")
    bad = cells.notna().to_numpy() & ~np.isfinite(numbers.to_numpy(dtype=float))
    if not bad.any():
        if numbers is not cells:
            frame[column] = numbers
        return
    first = int(np.flatnonzero(bad)[0])
    others = int(bad.sum()) - 1
    line, text = _cell_of(path, first, column)
    more = f"; {others} more row(s) have a {column} that is not a number" if others else ""
    raise TrainingError(
        f"{path}: line {line}: {column} must be a number (an empty cell if unknown), "
        f"got {cells.iloc[first] if text is None else text!r}{more}"
    )


def _cell_of(path: Path, row: int, column: str) -> tuple[int, str | None]:
    """The line of the file on which pandas' data row ``row`` (from 0) starts, and its cell in
    ``column`` as written (pandas reads "1e400" as inf). A quoted cell may span lines, and
    pandas skips blank lines (and lines of spaces) without numbering them."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        start, seen = reader.line_num + 1, 0
        for cells in reader:
            if cells and (len(cells) > 1 or cells[0].strip()):
                if seen == row:
                    at = header.index(column) if column in header else len(cells)
                    return start, cells[at] if at < len(cells) else None
                seen += 1
            start = reader.line_num + 1
    return start, None


def _count_rows(path: Path) -> int:
    return len(pd.read_csv(path, usecols=["Survived"]))


def load_training_data(path: Path, *, extra: Sequence[Path] = ()) -> tuple[pd.DataFrame, np.ndarray]:
    """Read a competition-layout train.csv (and extra files in the same layout, appended in
    order) into raw feature columns and labels.

    :raise TrainingError: a file is missing or lacks a column or a label.
    """
    frames = [_read_training_file(p) for p in (path, *extra)]
    frame = pd.concat(frames, ignore_index=True) if extra else frames[0]
    labels = frame["Survived"]
    smallest = int(labels.value_counts().min()) if labels.nunique() == 2 else 0
    if smallest < FOLDS:
        raise TrainingError(
            f"{path}: {FOLDS}-fold cross-validation needs at least {FOLDS} survivors and {FOLDS} victims"
        )
    # The column labels are the CSV header's names, all str (pandas' stubs say Hashable).
    records = cast(list[dict[str, Any]], frame.astype(object).where(frame.notna(), None).to_dict("records"))
    return features.raw_frame(records), frame["Survived"].to_numpy(dtype=int)


def _describe(pipeline: Pipeline) -> dict[str, Any]:
    model = pipeline.named_steps["model"]
    params = {k: v for k, v in sorted(model.get_params().items()) if isinstance(v, (int, float, str, bool, type(None)))}
    columns = pipeline.named_steps["columns"]
    used = [name for _, _, cols in columns.transformers for name in cols if isinstance(cols, list)]
    return {"estimator": type(model).__name__, "params": params, "features": used}


def _dump_bytes(obj: Any) -> bytes:
    """The artifact's bytes: a pickle in which every string is written once.

    The standard pickler writes a string once and refers back to it when the
    same object comes again, but writes an equal string that is another object
    anew. Which equal strings are one object depends on the process's history
    (loading a model before training changed it), so the same fit could give
    other bytes and another version. Here a repeated string always refers back,
    whatever its identity. ``joblib.load`` (and ``pickle.load``) read the result.
    """
    buffer = io.BytesIO()
    _StringsOncePickler(buffer, protocol=4).dump(obj)
    return buffer.getvalue()


class _StringsOncePickler(pickle._Pickler):  # the pure-Python pickler: its dispatch can be extended
    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file: Any, protocol: int) -> None:
        super().__init__(file, protocol=protocol)
        self._strings: dict[str, Any] = {}  # value -> the first object of that value written

    # typeshed leaves out the pure-Python pickler's undocumented save and save_str methods,
    # and types its dispatch table as the Unpickler's: hence the three ignores below.
    def save_str(self, obj: str) -> None:
        first = self._strings.setdefault(obj, obj)
        if first is not obj:
            self.save(first)  # type: ignore[attr-defined]  # the memo has it: written as a reference
            return
        pickle._Pickler.save_str(self, obj)  # type: ignore[attr-defined]

    dispatch[str] = save_str  # type: ignore[assignment]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def train(
    *,
    data_path: Path,
    out_dir: Path,
    extra_data: Sequence[Path] = (),
    candidates: Sequence[Candidate] = CANDIDATES,
    progress: Callable[[str], None] = lambda message: None,
) -> TrainResult:
    """Cross-validate the candidates, fit the best on all data, write artifact and card.

    :raise TrainingError: the training data cannot be used.
    """
    started = time.perf_counter()
    X, y = load_training_data(data_path, extra=extra_data)
    files = ", ".join(map(str, (data_path, *extra_data)))
    progress(f"training data: {files} ({len(y)} passengers, {y.mean():.1%} survived)")
    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=SEED)
    scores: dict[str, dict[str, float]] = {}
    for candidate in candidates:
        result = cross_validate(candidate.build(), X, y, cv=folds, scoring=("accuracy", "roc_auc"))
        scores[candidate.name] = {
            "accuracy_mean": round(float(result["test_accuracy"].mean()), 6),
            "accuracy_std": round(float(result["test_accuracy"].std()), 6),
            "roc_auc_mean": round(float(result["test_roc_auc"].mean()), 6),
            "roc_auc_std": round(float(result["test_roc_auc"].std()), 6),
        }
        s = scores[candidate.name]
        progress(
            f"  {candidate.name:<28} accuracy {s['accuracy_mean']:.4f} ± {s['accuracy_std']:.4f}"
            f"  ROC AUC {s['roc_auc_mean']:.4f}"
        )
    # Best accuracy wins; ties go to the earlier (simpler) candidate.
    best = max(candidates, key=lambda c: (scores[c.name]["accuracy_mean"], -candidates.index(c)))
    progress(f"best: {best.name}; fitting on all {len(y)} passengers")
    pipeline = best.build().fit(X, y)

    blob = _dump_bytes(pipeline)
    artifact_sha = hashlib.sha256(blob).hexdigest()
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact_path = out_dir / ARTIFACT_NAME
    card_path = out_dir / CARD_NAME
    card = {
        "version": artifact_sha[:12],
        "artifact": ARTIFACT_NAME,
        "artifact_sha256": artifact_sha,
        "training_data": {
            "file": data_path.name,
            "sha256": sha256_file(data_path),
            "rows": int(len(y)),
            "survival_rate": round(float(y.mean()), 6),
            # Every file trained on (train.csv, then any outcomes extract), each with its own digest.
            "sources": [
                {"file": p.name, "sha256": sha256_file(p), "rows": _count_rows(p)} for p in (data_path, *extra_data)
            ],
        },
        "libraries": {
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
            "pandas": pd.__version__,
            "joblib": joblib.__version__,
        },
        "cv": {"folds": FOLDS, "seed": SEED, "stratified": True, **scores[best.name]},
        "candidates": scores,
        "chosen": best.name,
        **_describe(pipeline),
        "threshold": 0.5,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "training_seconds": round(time.perf_counter() - started, 3),
    }
    # Artifact first, card last: a card always describes bytes that are on disk.
    _write_atomic(artifact_path, blob)
    _write_atomic(card_path, (json.dumps(card, indent=2) + "\n").encode())
    progress(f"wrote {artifact_path} and {card_path} (version {card['version']})")
    return TrainResult(artifact_path=artifact_path, card_path=card_path, card=card)
