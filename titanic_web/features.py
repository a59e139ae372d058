"""Raw passenger -> model features: the one definition used by training and serving.

The first step of every trained pipeline is :class:`PassengerFeatures`, so the
artifact carries this exact code path and serving cannot drift from training.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

#: The raw input columns the features are computed from (Kaggle names).
RAW_COLUMNS = ("Pclass", "Name", "Sex", "Age", "SibSp", "Parch", "Ticket", "Fare", "Cabin", "Embarked")

#: Engineered features, in the order the model sees them.
NUMERIC_FEATURES = (
    "Pclass",
    "Age",
    "SibSp",
    "Parch",
    "FamilySize",
    "IsAlone",
    "CabinKnown",
    "Fare",
    "FarePerPerson",
    "TicketGroupSize",
)
CATEGORICAL_FEATURES = ("Sex", "Title", "Deck", "Embarked")
FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES

# Titles as written in the Name column; anything else is grouped as "Rare".
_TITLE_GROUPS = {
    "Mr": "Mr",
    "Mrs": "Mrs",
    "Miss": "Miss",
    "Master": "Master",
    "Mlle": "Miss",
    "Ms": "Miss",
    "Mme": "Mrs",
}
_TITLE_RE = re.compile(r",\s*([^.,]+)\.")
_DECKS = frozenset("ABCDEFG")


def title_of(name: str | None) -> str:
    """Return the grouped title in a "Surname, Title. Given" name ("Unknown" if none)."""
    if not name:
        return "Unknown"
    match = _TITLE_RE.search(name)
    if match is None:
        return "Unknown"
    title = match.group(1).strip()
    if title.startswith("the "):  # "the Countess"
        title = title[4:]
    return _TITLE_GROUPS.get(title, "Rare")


def deck_of(cabin: str | None) -> str:
    """Return the deck letter of a cabin ("U" when the cabin is unknown or odd)."""
    if not cabin:
        return "U"
    letter = cabin.strip()[:1].upper()
    return letter if letter in _DECKS else "U"


def _text(value: Any) -> str | None:
    """Normalise a raw text cell: None, NaN and "" all mean missing."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _float(value: Any) -> float:
    if value is None:
        return np.nan
    return float(value)


def raw_frame(passengers: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Build a frame of the raw columns from passenger mappings (missing keys are NaN)."""
    rows = list(passengers)
    return pd.DataFrame.from_records(
        [{column: row.get(column) for column in RAW_COLUMNS} for row in rows],
        columns=list(RAW_COLUMNS),
    )


class PassengerFeatures(TransformerMixin, BaseEstimator):
    """Engineer the model's features from raw passenger columns.

    Fitting remembers how many training passengers hold each ticket, so that a
    passenger's ticket group is counted the same way in training and serving:
    the known passengers on the same ticket plus the passenger itself.
    """

    def fit(self, X: pd.DataFrame, y: Any = None) -> PassengerFeatures:
        tickets = [_text(t) for t in X["Ticket"]]
        counts: dict[str, int] = {}
        for ticket in tickets:
            if ticket is not None:
                counts[ticket] = counts.get(ticket, 0) + 1
        self.ticket_counts_ = dict(sorted(counts.items()))
        self.feature_names_out_ = np.asarray(FEATURES, dtype=object)
        return self

    def fit_transform(self, X: pd.DataFrame, y: Any = None, **fit_params: Any) -> pd.DataFrame:
        # Training rows are themselves among the known passengers: count the others.
        self.fit(X, y)
        return self._transform(X, training=True)

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        return self._transform(X, training=False)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(FEATURES, dtype=object)

    def _transform(self, X: pd.DataFrame, *, training: bool) -> pd.DataFrame:
        known = self.ticket_counts_
        sibsp = pd.to_numeric(X["SibSp"], errors="coerce").fillna(0).to_numpy(dtype=float)
        parch = pd.to_numeric(X["Parch"], errors="coerce").fillna(0).to_numpy(dtype=float)
        family = sibsp + parch + 1
        tickets = [_text(t) for t in X["Ticket"]]
        others = np.array(
            [known.get(t, 0) - (1 if training else 0) if t is not None else 0 for t in tickets],
            dtype=float,
        )
        group = np.maximum(others + 1, family)
        fare = np.array([_float(v) for v in X["Fare"]], dtype=float)
        cabins = [_text(c) for c in X["Cabin"]]
        embarked = [_text(e) or "Unknown" for e in X["Embarked"]]
        return pd.DataFrame(
            {
                "Pclass": pd.to_numeric(X["Pclass"]).to_numpy(dtype=float),
                "Age": np.array([_float(v) for v in X["Age"]], dtype=float),
                "SibSp": sibsp,
                "Parch": parch,
                "FamilySize": family,
                "IsAlone": (family == 1).astype(float),
                "CabinKnown": np.array([c is not None for c in cabins], dtype=float),
                "Fare": fare,
                "FarePerPerson": fare / group,
                "TicketGroupSize": group,
                "Sex": [str(s) for s in X["Sex"]],
                "Title": [title_of(_text(n)) for n in X["Name"]],
                "Deck": [deck_of(c) for c in cabins],
                "Embarked": embarked,
            },
            columns=list(FEATURES),
            index=X.index,
        )
