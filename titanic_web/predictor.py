"""Load a verified model artifact and predict; knows nothing of Flask or databases."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import joblib
import numpy as np
import sklearn

from titanic_web import features
from titanic_web.compiled import Explanation, compile_pipeline
from titanic_web.training import ARTIFACT_NAME, CARD_NAME


class ModelError(Exception):
    """The model artifact is missing, tampered with or incompatible."""


@dataclass(frozen=True)
class Prediction:
    """One passenger's prediction and the features the model saw."""

    survived: int
    probability: float
    features: dict[str, Any]


def _libraries(card: Mapping[str, Any]) -> str:
    """The libraries a card says its artifact was written with, as "numpy 2.1.0, scikit-learn 1.5.2"."""
    libraries = card.get("libraries")
    if not isinstance(libraries, Mapping) or not libraries:
        return "libraries its card does not name"
    return ", ".join(f"{name} {version}" for name, version in libraries.items())


class Predictor:
    """A fitted pipeline together with the model card that vouches for it."""

    def __init__(self, pipeline: Any, card: Mapping[str, Any]) -> None:
        self.pipeline = pipeline
        # The fitted pipeline's arithmetic as plain arrays, derived here from the
        # artifact itself (None: an estimator it does not know; the pipeline serves).
        self.compiled = compile_pipeline(pipeline)
        self.card = dict(card)
        self.version: str = str(card["version"])
        self.threshold: float = float(card.get("threshold", 0.5))

    @classmethod
    def from_dir(cls, directory: Path) -> Predictor:
        """Load the artifact and card in a model directory.

        :raise ModelError: missing files, a sha256 mismatch, another scikit-learn, or an
            artifact that fails to unpickle here (a missing module, another numpy...).
        """
        card_path = directory / CARD_NAME
        artifact_path = directory / ARTIFACT_NAME
        if not card_path.is_file() or not artifact_path.is_file():
            raise ModelError(f"no trained model in {directory}: run `flask --app titanic_web train` to create one")
        try:
            card = json.loads(card_path.read_text())
            expected = card["artifact_sha256"]
            trained_with = card["libraries"]["scikit-learn"]
            card["version"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"model card {card_path} is unreadable ({exc}); retrain the model") from exc
        blob = artifact_path.read_bytes()
        actual = hashlib.sha256(blob).hexdigest()
        if actual != expected:
            raise ModelError(
                f"model artifact {artifact_path} does not match its card (sha256 {actual[:12]}..., "
                f"card says {str(expected)[:12]}...): refusing to load it; retrain the model"
            )
        if trained_with != sklearn.__version__:
            raise ModelError(
                f"model artifact was written by scikit-learn {trained_with}, this is {sklearn.__version__}: "
                "retrain it with `flask --app titanic_web train`"
            )
        # Safe to unpickle only now: the bytes are the ones the card vouches for.
        try:
            pipeline = joblib.load(artifact_path)
        except Exception as exc:  # a missing module or class, another numpy's layout, a damaged pickle...
            raise ModelError(
                f"model artifact {artifact_path} cannot be loaded here ({type(exc).__name__}: {exc}); "
                f"it was written with {_libraries(card)}: install those versions, or retrain it with "
                "`flask --app titanic_web train`"
            ) from exc
        return cls(pipeline, card)

    @overload
    def predict(self, passengers: Mapping[str, Any]) -> Prediction: ...

    @overload
    def predict(self, passengers: Sequence[Mapping[str, Any]]) -> list[Prediction]: ...

    def predict(self, passengers: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Prediction | list[Prediction]:
        """Predict one passenger (returns one Prediction) or many (returns a list, in order).

        Passengers are validated mappings of the schema's fields.
        """
        if isinstance(passengers, Mapping):
            return self._predict_many([passengers])[0]
        return self._predict_many(passengers)

    def _predict_many(self, passengers: Sequence[Mapping[str, Any]]) -> list[Prediction]:
        probabilities, rows = self.score(passengers)
        return [
            Prediction(survived=int(p >= self.threshold), probability=p, features=features.to_record(row))
            for p, row in zip(probabilities.tolist(), rows, strict=True)
        ]

    def score_columns(self, columns: Mapping[str, Sequence[Any]]) -> tuple[np.ndarray, list[tuple[Any, ...]]]:
        """:meth:`score` for validated passengers given as columns (field name -> values)."""
        if self.compiled is not None:
            raws = list(zip(*(columns[name] for name in features.RAW_COLUMNS), strict=True))
            rows = features.engineer_raws(raws, known=self.compiled.known)
            return self.compiled.probabilities(rows), rows
        names = list(columns)
        return self.score(
            [dict(zip(names, values, strict=True)) for values in zip(*(columns[n] for n in names), strict=True)]
        )

    def score(self, passengers: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, list[tuple[Any, ...]]]:
        """P(survived) for validated passengers, with the engineered rows (FEATURES order, NaN
        when unknown) the model saw: the compiled form when there is one, else the pipeline."""
        if not passengers:
            return np.empty(0, dtype=np.float64), []
        if self.compiled is not None:
            scored = self.compiled.predict(passengers)
            return scored.probabilities, scored.rows
        engineered = self.pipeline[0].transform(features.raw_frame(passengers))
        probabilities = self.pipeline[1:].predict_proba(engineered)[:, 1]
        columns = [engineered[name].tolist() for name in features.FEATURES]  # Python floats and texts
        return probabilities, list(zip(*columns, strict=True))

    def explain(self, rows: Sequence[Sequence[Any]]) -> list[Explanation]:
        """Take each answer apart: for engineered rows (as :meth:`score` returns them), the
        model's base output and every feature's contribution, most important first.

        :raise ModelError: the model has no compiled form, which explaining reads.
        """
        if self.compiled is None:
            raise ModelError(f"model {self.version} ({type(self.pipeline[-1]).__name__}) cannot explain its answers")
        return self.compiled.explain(rows)
