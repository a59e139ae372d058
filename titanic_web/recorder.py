"""Get answered predictions into the feature_store and predictions tables.

The request path calls :meth:`Recorder.record` with plain records and knows
nothing else about storage. This version writes them in one transaction before
returning; the interface is the seam where a write-behind recorder goes.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert

from titanic_web.extensions import db
from titanic_web.models import FeatureRow, PredictionRow, now_utc


@dataclass(frozen=True)
class Record:
    """Everything stored about one answered prediction."""

    id: uuid.UUID
    passenger_id: int | None
    survived: int
    probability: float
    model_version: str
    source: str
    features: dict[str, Any]
    raw_input: dict[str, Any]
    created_at: datetime = field(default_factory=now_utc)


class Recorder:
    """Writes records to the database through the app's SQLAlchemy session."""

    def record(self, records: Sequence[Record]) -> None:
        """Store predictions and their features, all or nothing, exactly once each."""
        if not records:
            return
        predictions = [
            {
                "id": r.id,
                "passenger_id": r.passenger_id,
                "survived": r.survived,
                "probability": r.probability,
                "model_version": r.model_version,
                "source": r.source,
                "created_at": r.created_at,
            }
            for r in records
        ]
        feature_rows = [
            {
                "prediction_id": r.id,
                "features": r.features,
                "raw_input": r.raw_input,
                "model_version": r.model_version,
                "created_at": r.created_at,
            }
            for r in records
        ]
        try:
            db.session.execute(insert(PredictionRow), predictions)
            db.session.execute(insert(FeatureRow), feature_rows)
            db.session.commit()
        except Exception:
            db.session.rollback()
            raise
