"""Raw passenger -> model features: the one definition used by training and serving.

The first step of every trained pipeline is :class:`PassengerFeatures`, so the
artifact carries this exact code path and serving cannot drift from training.
The compiled fast path (:mod:`titanic_web.compiled`) calls :func:`engineer_many`,
the same per-passenger loop that :class:`PassengerFeatures` runs.

Two features carry what training knew of a passenger's travelling group (the
known passengers sharing the ticket, or the surname with the same class and
fare): whether its other women and children all lived, or all died. They are
computed from the labels the pipeline was fitted on, leaving each training
passenger's own label out, so cross-validation (which refits the pipeline in
every fold) never sees a held-out label.
"""

from __future__ import annotations

import itertools
import math
import operator
import re
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from titanic_web import jsontext

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
    "WCGroupLived",
    "WCGroupDied",
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


def surname_of(name: str | None) -> str | None:
    """Return the lower-cased surname of a "Surname, Title. Given" name (None without a comma)."""
    if not name:
        return None
    surname, comma, _ = name.partition(",")
    surname = surname.strip().lower()
    return surname if comma and surname else None


def group_keys(
    ticket: str | None, name: str | None, pclass: Any, fare: Any, *, families: Container[str] | None = None
) -> tuple[str, ...]:
    """The travelling groups a passenger belongs to: its ticket, and its surname within a class and fare.

    A family travelled in one class on one fare (often on several tickets); a
    shared surname alone would join strangers, hence the class and fare.
    Runs for every passenger served: one pass, no intermediate list. With
    ``families`` (:attr:`Known.family_surnames`), only the groups that can be
    known: a surname outside it gets no family key, which no known group has.
    """
    surname = surname_of(name)
    if (
        surname is None
        or pclass is None
        or pclass != pclass
        or fare is None
        or fare != fare
        or (families is not None and surname not in families)
    ):
        return () if ticket is None else ("T " + ticket,)
    # %d truncates the float class pandas gives; the keys must stay as trained models stored them.
    family = "F %s %d %.2f" % (surname, pclass, fare)  # noqa: UP031
    return (family,) if ticket is None else ("T " + ticket, family)


def is_woman_or_child(sex: Any, title: str) -> bool:
    """Women and boys (title Master): "women and children first" made them one group's fate."""
    return sex == "female" or title == "Master"


@dataclass(frozen=True)
class Known:
    """What fitting remembered of the training passengers, for the group features.

    ``ticket_counts``: training passengers per ticket. ``groups``: per group key
    (:func:`group_keys`), its women and children and how many of them lived.
    """

    ticket_counts: Mapping[str, int] = field(default_factory=dict)
    groups: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    @cached_property
    def family_surnames(self) -> frozenset[str]:
        """The surnames of the family groups (keys "F <surname> <class> <fare>"): the family key
        of any other surname finds no group, so serving need not make it (it costs a float
        format a passenger)."""
        return frozenset(key[2:].rsplit(" ", 2)[0] for key in self.groups if key.startswith("F "))


def count_groups(raws: Iterable[Sequence[Any]], labels: Sequence[int]) -> dict[str, tuple[int, int]]:
    """Each group's women and children and the survivors among them, from labelled raw rows (RAW_COLUMNS order)."""
    groups: dict[str, list[int]] = {}
    for (pclass, name, sex, _age, _sibsp, _parch, ticket, fare, _cabin, _embarked), label in zip(
        raws, labels, strict=True
    ):
        name = _text(name)
        if not is_woman_or_child(_text(sex), title_of(name)):
            continue
        for key in group_keys(_text(ticket), name, pclass, fare):
            tally = groups.setdefault(key, [0, 0])
            tally[0] += 1
            tally[1] += int(label)
    return {key: (n, lived) for key, (n, lived) in sorted(groups.items())}


def _text(value: Any) -> str | None:
    """Normalise a raw text cell: None, NaN and "" all mean missing."""
    if value.__class__ is not str:  # the common case first: this runs per passenger and field
        if value is None or (isinstance(value, float) and value != value):
            return None
        value = str(value)
    return value.strip() or None


def _count(value: Any) -> float:
    """A raw head count; missing or unreadable counts as 0 (as pandas' coerce-and-fill did)."""
    if value.__class__ is int:
        return float(value)
    if value is None:
        return 0.0
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return 0.0 if number != number else number


def _engineer(
    raws: Iterable[Sequence[Any]], known: Known, training: bool, labels: Sequence[int] | None = None
) -> list[tuple[Any, ...]]:
    """The feature definition: raw values (RAW_COLUMNS order) -> features (FEATURES order), per passenger.

    One loop for every caller, so the per-passenger work is not a function call
    each: it runs for every passenger on every path. ``training`` means the
    passengers are those ``known`` was counted from (with these ``labels``): each
    is then left out of its own groups.
    """
    nan = math.nan
    text = _text
    count = _count
    title_for = title_of
    deck = deck_of
    counts_get = known.ticket_counts.get
    groups_get = known.groups.get
    keys_of = group_keys
    # Training leaves each passenger out of every group it is in, found or not: all its keys.
    families = None if training else known.family_surnames
    minus = 1 if training else 0
    own_labels = iter(labels) if training and labels is not None else itertools.repeat(0)
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    for pclass, name, sex, age, sibsp, parch, ticket, fare, cabin, embarked in raws:
        sibsp = float(sibsp) if sibsp.__class__ is int else count(sibsp)
        parch = float(parch) if parch.__class__ is int else count(parch)
        family = sibsp + parch + 1.0
        ticket = (ticket.strip() or None) if ticket.__class__ is str else text(ticket)
        # The known passengers on the ticket, without the passenger itself when training.
        group = float(counts_get(ticket, 0) - minus) + 1.0 if ticket is not None else 1.0
        if family > group or family != family:  # np.maximum's choice, NaN included
            group = family
        fare = nan if fare is None else float(fare)
        cabin = (cabin.strip() or None) if cabin.__class__ is str else text(cabin)
        name = (name.strip() or None) if name.__class__ is str else text(name)
        embarked = (embarked.strip() or None) if embarked.__class__ is str else text(embarked)
        # Stripped as count_groups strips it: a padded " female" is a woman, in her groups too.
        sex = ((sex.strip() or None) if sex.__class__ is str else text(sex)) or "Unknown"
        title = title_for(name)
        label = next(own_labels)
        # The other known women and children of the passenger's groups: all lived, all died?
        members = lived = 0
        keys = keys_of(ticket, name, pclass, fare, families=families)
        for key in keys:
            tally = groups_get(key)
            if tally is not None:
                members += tally[0]
                lived += tally[1]
        if minus and members and (sex == "female" or title == "Master"):  # counted in count_groups
            taken = len(keys)  # the passenger is in each of its groups once
            members -= taken
            lived -= taken * label
        append(
            (
                nan if pclass is None else float(pclass),
                nan if age is None else float(age),
                sibsp,
                parch,
                family,
                1.0 if family == 1.0 else 0.0,
                0.0 if cabin is None else 1.0,
                fare,
                fare / group,
                group,
                1.0 if members and lived == members else 0.0,
                1.0 if members and not lived else 0.0,
                sex,
                title,
                "U" if cabin is None else deck(cabin),  # most cabins are unknown: skip the call
                embarked or "Unknown",
            )
        )
    return rows


_raw_values = operator.itemgetter(*RAW_COLUMNS)


def _raws(passengers: Iterable[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    passengers = passengers if isinstance(passengers, Sequence) else list(passengers)
    try:
        return list(map(_raw_values, passengers))
    except KeyError:  # some passenger lacks a key: missing counts as None, as in raw_frame
        return [tuple(passenger.get(column) for column in RAW_COLUMNS) for passenger in passengers]


def engineer(passenger: Mapping[str, Any], *, known: Known) -> tuple[Any, ...]:
    """Engineer one passenger into FEATURES order: floats (NaN when unknown), then texts.

    This is the only definition of the features: :class:`PassengerFeatures` (training
    and the pipeline) and the compiled fast path (:mod:`titanic_web.compiled`) both
    run it. Missing keys count as None; ``known`` is what the fitted model
    remembered of its training passengers.
    """
    return _engineer(_raws([passenger]), known, False)[0]


def engineer_many(passengers: Iterable[Mapping[str, Any]], *, known: Known) -> list[tuple[Any, ...]]:
    """:func:`engineer` for each passenger, in order."""
    return _engineer(_raws(passengers), known, False)


def engineer_raws(raws: Iterable[Sequence[Any]], *, known: Known) -> list[tuple[Any, ...]]:
    """:func:`engineer_many` for passengers given as value tuples in :data:`RAW_COLUMNS` order."""
    return _engineer(raws, known, False)


def to_record(row: Sequence[Any]) -> dict[str, Any]:
    """An engineered row as the feature store keeps it: keyed by FEATURES, None for NaN."""
    record = dict(zip(FEATURES, row, strict=True))
    # The numbers come first in a row: zip stops after them, before the texts.
    for name, value in zip(NUMERIC_FEATURES, row, strict=False):
        if value != value:
            record[name] = None
    return record


def engineered_frame(rows: Sequence[Sequence[Any]], *, index: Any = None) -> pd.DataFrame:
    """Build the engineered frame (float numbers, text categories) from rows in FEATURES order."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(FEATURES)
    width = len(NUMERIC_FEATURES)
    # The numeric columns come first: zip stops after them; the texts follow from columns[width:].
    data: dict[str, Any] = {
        name: np.array(column, dtype=float) for name, column in zip(NUMERIC_FEATURES, columns, strict=False)
    }
    data.update({name: list(column) for name, column in zip(CATEGORICAL_FEATURES, columns[width:], strict=True)})
    return pd.DataFrame(data, columns=list(FEATURES), index=index)


def raw_frame(passengers: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Build a frame of the raw columns from passenger mappings (missing keys are NaN)."""
    rows = list(passengers)
    return pd.DataFrame.from_records(
        [{column: row.get(column) for column in RAW_COLUMNS} for row in rows],
        columns=list(RAW_COLUMNS),
    )


class PassengerFeatures(TransformerMixin, BaseEstimator):
    """Engineer the model's features from raw passenger columns.

    Fitting remembers how many training passengers hold each ticket, and, from
    the labels, how each travelling group's women and children fared, so that a
    passenger is placed in its groups the same way in training and serving:
    among the known passengers, never counting its own label.
    """

    def fit(self, X: pd.DataFrame, y: Any = None) -> PassengerFeatures:
        tickets = [_text(t) for t in X["Ticket"]]
        counts: dict[str, int] = {}
        for ticket in tickets:
            if ticket is not None:
                counts[ticket] = counts.get(ticket, 0) + 1
        self.ticket_counts_ = dict(sorted(counts.items()))
        labels = None if y is None else np.asarray(y, dtype=int).tolist()
        self.groups_ = {} if labels is None else count_groups(self._raw_rows(X), labels)
        self.feature_names_out_ = np.asarray(FEATURES, dtype=object)
        return self

    def fit_transform(self, X: pd.DataFrame, y: Any = None, **fit_params: Any) -> pd.DataFrame:
        # Training rows are themselves among the known passengers: count the others.
        self.fit(X, y)
        labels = None if y is None else np.asarray(y, dtype=int).tolist()
        return engineered_frame(_engineer(self._raw_rows(X), self.known, True, labels), index=X.index)

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        return engineered_frame(_engineer(self._raw_rows(X), self.known, False), index=X.index)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(FEATURES, dtype=object)

    @property
    def known(self) -> Known:
        """The fitted tables, as the engineering functions take them: one :class:`Known` per
        fit, so that what it works out on first use (its family surnames) is worked out once."""
        known = self.__dict__.get("_known")
        if known is None or known.groups is not self.groups_ or known.ticket_counts is not self.ticket_counts_:
            known = self.__dict__["_known"] = Known(ticket_counts=self.ticket_counts_, groups=self.groups_)
        return known

    def __getstate__(self) -> dict[str, Any]:
        # The artifact holds the fitted tables, not what is derived from them: its bytes stay
        # those of the fit alone. A copy: the state may be the instance's own __dict__.
        state = dict(super().__getstate__())
        state.pop("_known", None)
        return state

    @staticmethod
    def _raw_rows(X: pd.DataFrame) -> list[tuple[Any, ...]]:
        return list(zip(*(X[column].tolist() for column in RAW_COLUMNS), strict=True))


_FEATURES_JSON = "{" + ",".join(f'"{name}":%s' for name in FEATURES) + "}"


def features_json(rows: Sequence[Sequence[Any]]) -> list[str]:
    """``json.dumps(to_record(row), separators=(",", ":"))`` for each engineered row, without the dicts.

    The numbers are floats (NaN is written null, as :func:`to_record` makes it None),
    the texts are the categorical values.
    """
    width = len(NUMERIC_FEATURES)
    if len(rows) < 8:  # a request of a few passengers: row by row is quicker than setting up columns
        numbers, strings = jsontext.numbers, jsontext.strings
        return [_FEATURES_JSON % (*numbers(row[:width]), *strings(row[width:])) for row in rows]
    columns = list(zip(*rows, strict=True))
    return jsontext.objects(NUMERIC_FEATURES, columns[:width], CATEGORICAL_FEATURES, columns[width:])
