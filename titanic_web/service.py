"""The one prediction flow shared by the form and the API: predict, then record."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from titanic_web import requestlog
from titanic_web.ids import new_ids
from titanic_web.predictor import ModelError, Predictor
from titanic_web.recorder import Record, Recorder
from titanic_web.registry import load_predictor


class ModelUnavailable(Exception):
    """No usable model is loaded; the message says why and how to fix it."""


@dataclass(frozen=True)
class Answer:
    """One passenger's answer, as returned to the client and stored."""

    id: uuid.UUID
    passenger_id: int | None
    survived: int
    probability: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "PassengerId": self.passenger_id,
            "survived": self.survived,
            "probability": round(self.probability, 4),
        }


class PredictionService:
    """Holds the loaded model and the recorder; answers validated passengers."""

    def __init__(
        self, *, predictor: Predictor | None, recorder: Recorder, model_error: str | None = None, recording: bool = True
    ) -> None:
        self.predictor = predictor
        self.recorder = recorder
        self.model_error = model_error
        self.recording = recording

    @classmethod
    def from_model_dir(cls, model_dir: Path, *, recorder: Recorder, recording: bool = True) -> PredictionService:
        """Load the model MODEL_DIR designates (a registry's active version, or a single model folder);
        a missing or bad model is kept as an error, not raised."""
        try:
            return cls(predictor=load_predictor(model_dir), recorder=recorder, recording=recording)
        except ModelError as exc:
            return cls(predictor=None, recorder=recorder, model_error=str(exc), recording=recording)

    def require_predictor(self) -> Predictor:
        """Return the loaded predictor.

        :raise ModelUnavailable: no model could be loaded.
        """
        if self.predictor is None:
            raise ModelUnavailable(self.model_error or "no model loaded")
        return self.predictor

    def predict(self, passengers: Sequence[Mapping[str, Any]], *, source: str) -> tuple[str, list[Answer]]:
        """Predict validated passengers, record every answer, and return them in order.

        :raise ModelUnavailable: no model is loaded.
        :raise RecorderError: the answers could not be kept, so none may be given.
        """
        predictor = self.require_predictor()
        predictions = predictor.predict(passengers)
        request = requestlog.current()  # the request being answered: stored with each prediction
        request_id, latency_ms = (None, None) if request is None else (request.id, request.elapsed_ms())
        records = [
            Record(
                id=uuid.UUID(hex=prediction_id),
                passenger_id=passenger.get("PassengerId"),
                survived=p.survived,
                probability=p.probability,
                model_version=predictor.version,
                source=source,
                features=p.features,
                raw_input=dict(passenger),
                request_id=request_id,
                latency_ms=latency_ms,
            )
            for passenger, p, prediction_id in zip(passengers, predictions, new_ids(len(predictions)), strict=True)
        ]
        if self.recording:
            self.recorder.record(records)
        if request is not None:
            answered = requestlog.Tally()
            answered.add([r.probability for r in records], sum(r.survived for r in records))
            request.add(answered)
        return predictor.version, [
            Answer(id=r.id, passenger_id=r.passenger_id, survived=r.survived, probability=r.probability)
            for r in records
        ]
