"""Feature engineering: titles, decks, family and ticket groups, the same in training and serving."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest

from tests.conftest import PASSENGER, TEST_CSV, TRAIN_CSV
from titanic_web import features
from titanic_web.features import FEATURES, PassengerFeatures, deck_of, raw_frame, title_of
from titanic_web.training import ARTIFACT_NAME


def passenger(**changes: Any) -> dict[str, Any]:
    return {**PASSENGER, **changes}


def frame(*passengers: dict[str, Any]) -> pd.DataFrame:
    return raw_frame(passengers)


@pytest.mark.parametrize(
    ("name", "title"),
    [
        ("Braund, Mr. Owen Harris", "Mr"),
        ("Cumings, Mrs. John Bradley (Florence Briggs Thayer)", "Mrs"),
        ("Heikkinen, Miss. Laina", "Miss"),
        ("Palsson, Master. Gosta Leonard", "Master"),
        ("Sagesser, Mlle. Emma", "Miss"),
        ("Aubart, Mme. Leontine Pauline", "Mrs"),
        ("O'Donoghue, Ms. Bridget", "Miss"),
        ("Minahan, Dr. William Edward", "Rare"),
        ("Byles, Rev. Thomas Roussel Davids", "Rare"),
        ("Weir, Col. John", "Rare"),
        ("Rothes, the Countess. of (Lucy Noel Martha Dyer-Edwards)", "Rare"),
        ("Reuchlin, Jonkheer. John George", "Rare"),
        ("John Smith", "Unknown"),
        ("Smith, John", "Unknown"),
        ("", "Unknown"),
        (None, "Unknown"),
    ],
)
def test_title_of(name: str | None, title: str) -> None:
    assert title_of(name) == title


@pytest.mark.parametrize(
    ("cabin", "deck"),
    [
        ("C85", "C"),
        ("b5", "B"),
        (" E10", "E"),
        ("F G73", "F"),
        ("A", "A"),
        ("G6", "G"),
        ("T", "U"),
        ("85", "U"),
        ("", "U"),
        (None, "U"),
    ],
)
def test_deck_of(cabin: str | None, deck: str) -> None:
    assert deck_of(cabin) == deck


def test_raw_frame_has_the_raw_columns_and_nan_for_missing_keys() -> None:
    raw = raw_frame([{"Pclass": 1, "Sex": "male"}])
    assert list(raw.columns) == list(features.RAW_COLUMNS)
    assert raw.loc[0, "Pclass"] == 1
    assert raw["Age"].isna().all()


def test_output_columns_are_the_features_in_order() -> None:
    step = PassengerFeatures().fit(frame(PASSENGER))
    out = step.transform(frame(PASSENGER, passenger(Ticket="X")))
    assert list(out.columns) == list(FEATURES)
    assert list(step.get_feature_names_out()) == list(FEATURES)
    assert len(out) == 2


def test_output_keeps_the_input_index() -> None:
    raw = frame(PASSENGER, PASSENGER)
    raw.index = [10, 20]
    out = PassengerFeatures().fit(raw).transform(raw)
    assert list(out.index) == [10, 20]


@pytest.mark.parametrize(
    ("sibsp", "parch", "family", "alone"),
    [(0, 0, 1, 1.0), (1, 0, 2, 0.0), (0, 2, 3, 0.0), (3, 2, 6, 0.0)],
)
def test_family_size_and_is_alone(sibsp: int, parch: int, family: int, alone: float) -> None:
    row = passenger(SibSp=sibsp, Parch=parch)
    out = PassengerFeatures().fit(frame(row)).transform(frame(row))
    assert out.loc[0, "FamilySize"] == family
    assert out.loc[0, "IsAlone"] == alone


def test_missing_sibsp_and_parch_count_as_zero() -> None:
    out = PassengerFeatures().fit(frame(PASSENGER)).transform(raw_frame([{"Pclass": 3, "Sex": "male"}]))
    assert (out.loc[0, "SibSp"], out.loc[0, "Parch"], out.loc[0, "FamilySize"], out.loc[0, "IsAlone"]) == (0, 0, 1, 1)


@pytest.mark.parametrize(
    ("cabin", "known", "deck"), [("C85", 1.0, "C"), (None, 0.0, "U"), ("", 0.0, "U"), ("T", 1.0, "U")]
)
def test_cabin_known_and_deck(cabin: str | None, known: float, deck: str) -> None:
    row = passenger(Cabin=cabin)
    out = PassengerFeatures().fit(frame(row)).transform(frame(row))
    assert out.loc[0, "CabinKnown"] == known
    assert out.loc[0, "Deck"] == deck


def test_title_sex_and_embarked_pass_through() -> None:
    row = passenger(Name="Heikkinen, Miss. Laina", Sex="female", Embarked="S")
    out = PassengerFeatures().fit(frame(row)).transform(frame(row, passenger(Embarked=None)))
    assert list(out["Title"]) == ["Miss", "Mr"]
    assert list(out["Sex"]) == ["female", "male"]
    assert list(out["Embarked"]) == ["S", "Unknown"]


# --- ticket groups: the known passengers on the ticket plus the passenger itself ---


SHARED = [
    passenger(Ticket="T", Name="A, Mr. A", Fare=30.0),
    passenger(Ticket="T", Name="B, Mrs. B", Fare=30.0),
    passenger(Ticket="T", Name="C, Miss. C", Fare=30.0),
]


def test_fit_counts_the_passengers_on_each_ticket() -> None:
    step = PassengerFeatures().fit(frame(*SHARED, passenger(Ticket="U"), passenger(Ticket=None), passenger(Ticket=" ")))
    assert step.ticket_counts_ == {"T": 3, "U": 1}


def test_fit_transform_counts_each_training_passenger_once() -> None:
    out = PassengerFeatures().fit_transform(frame(*SHARED))
    assert list(out["TicketGroupSize"]) == [3, 3, 3]
    assert list(out["FarePerPerson"]) == [10.0, 10.0, 10.0]


def test_a_new_passenger_on_a_known_ticket_joins_the_group() -> None:
    step = PassengerFeatures().fit(frame(*SHARED))
    out = step.transform(frame(passenger(Ticket="T", Fare=40.0)))
    assert out.loc[0, "TicketGroupSize"] == 4
    assert out.loc[0, "FarePerPerson"] == 10.0


def test_a_new_passenger_on_an_unknown_ticket_is_a_group_of_its_family() -> None:
    step = PassengerFeatures().fit(frame(*SHARED))
    out = step.transform(frame(passenger(Ticket="NEW", SibSp=2, Fare=9.0), passenger(Ticket="NEW2")))
    assert list(out["TicketGroupSize"]) == [3, 1]  # family of 3; alone
    assert out.loc[0, "FarePerPerson"] == 3.0


def test_a_passenger_without_a_ticket_is_not_grouped_with_others_lacking_one() -> None:
    step = PassengerFeatures().fit(frame(passenger(Ticket=None), passenger(Ticket="")))
    assert list(step.fit_transform(frame(passenger(Ticket=None), passenger(Ticket=""))).loc[:, "TicketGroupSize"]) == [
        1,
        1,
    ]
    assert step.transform(frame(passenger(Ticket=""))).loc[0, "TicketGroupSize"] == 1


def test_training_and_serving_count_a_passenger_the_same_way() -> None:
    """A training row sees the same group as the same passenger served after fitting on the others."""
    rows = [*SHARED, passenger(Ticket="U", SibSp=1), passenger(Ticket="V")]
    trained = PassengerFeatures().fit_transform(frame(*rows))
    for i, row in enumerate(rows):
        others = rows[:i] + rows[i + 1 :]
        served = PassengerFeatures().fit(frame(*others)).transform(frame(row))
        assert served.loc[0, "TicketGroupSize"] == trained.loc[i, "TicketGroupSize"], i
        assert served.loc[0, "FarePerPerson"] == trained.loc[i, "FarePerPerson"], i


def test_missing_age_and_fare_stay_missing() -> None:
    row = passenger(Age=None, Fare=None)
    out = PassengerFeatures().fit(frame(PASSENGER)).transform(frame(row, PASSENGER))
    assert math.isnan(out.loc[0, "Age"])
    assert math.isnan(out.loc[0, "Fare"])
    assert math.isnan(out.loc[0, "FarePerPerson"])
    assert out.loc[1, "Age"] == 34.5  # a known value in the same batch is untouched


def test_transform_does_not_learn() -> None:
    step = PassengerFeatures().fit(frame(*SHARED))
    before = dict(step.ticket_counts_)
    step.transform(frame(passenger(Ticket="T"), passenger(Ticket="NEW")))
    assert step.ticket_counts_ == before


# --- the trained pipeline carries this code --------------------------------------


def test_the_trained_pipeline_starts_with_these_features(model_dir: Path) -> None:
    pipeline = joblib.load(model_dir / ARTIFACT_NAME)
    assert isinstance(pipeline[0], PassengerFeatures)
    assert type(pipeline[0]) is features.PassengerFeatures
    train = pd.read_csv(TRAIN_CSV)
    assert pipeline[0].ticket_counts_ == dict(Counter(train["Ticket"].astype(str).str.strip()))


def test_the_trained_pipeline_remembers_the_training_groups(model_dir: Path) -> None:
    pipeline = joblib.load(model_dir / ARTIFACT_NAME)
    train = pd.read_csv(TRAIN_CSV)
    raws = list(
        zip(*(train[c].astype(object).where(train[c].notna(), None) for c in features.RAW_COLUMNS), strict=True)
    )
    assert pipeline[0].groups_ == features.count_groups(raws, train["Survived"].tolist())


# --- travelling groups: what the known women and children of a group did ----------


def test_surname_of() -> None:
    assert features.surname_of("Andersson, Mrs. Anders Johan") == "andersson"
    assert features.surname_of(" De Messemaeker , Mr. Guillaume") == "de messemaeker"
    assert features.surname_of("John Smith") is None
    assert features.surname_of(None) is None
    assert features.surname_of(", Mr. X") is None


def test_group_keys_are_the_ticket_and_the_surname_within_class_and_fare() -> None:
    assert features.group_keys("347082", "Andersson, Mr. Anders", 3, 31.275) == ("T 347082", "F andersson 3 31.27")
    assert features.group_keys(None, "Andersson, Mr. Anders", 3.0, 31.275) == ("F andersson 3 31.27",)
    assert features.group_keys("347082", "Andersson, Mr. Anders", 3, None) == ("T 347082",)
    assert features.group_keys("347082", "Andersson, Mr. Anders", 3, math.nan) == ("T 347082",)
    assert features.group_keys(None, "no comma", 3, 7.0) == ()


def test_family_keys_are_made_only_for_surnames_a_known_group_has() -> None:
    families = frozenset({"andersson", "de mulder"})
    assert features.group_keys("1", "Andersson, Mr. Anders", 3, 31.275, families=families) == (
        "T 1",
        "F andersson 3 31.27",
    )
    assert features.group_keys("1", "De Mulder, Mr. Theodore", 3, 9.5, families=families)[1] == "F de mulder 3 9.50"
    assert features.group_keys("1", "Smith, Mr. John", 3, 7.0, families=families) == ("T 1",)
    assert features.group_keys(None, "Smith, Mr. John", 3, 7.0, families=families) == ()
    known = features.Known(groups={"F de mulder 3 9.50": (1, 1), "T 1": (2, 0), "F o'brien 1 80.00": (1, 0)})
    assert known.family_surnames == {"de mulder", "o'brien"}


def test_the_fitted_tables_make_one_known_per_fit_and_the_artifact_keeps_only_the_tables() -> None:
    train = pd.read_csv(TRAIN_CSV)
    fitted = PassengerFeatures().fit(train, train["Survived"])
    known = fitted.known
    assert fitted.known is known and known.family_surnames  # worked out once, then kept
    state = fitted.__getstate__()
    assert "_known" not in state and "_known" in fitted.__dict__
    assert fitted.fit(train.head(100), train["Survived"].head(100)).known is not known  # a new fit


class Everyone:
    """A set of surnames that holds every surname: family keys are made for all."""

    def __contains__(self, surname: object) -> bool:
        return True


def test_serving_without_the_family_keys_no_group_has_engineers_the_same_rows() -> None:
    train = pd.read_csv(TRAIN_CSV)
    serving = pd.concat([train, pd.read_csv(TEST_CSV)], ignore_index=True)
    fitted = PassengerFeatures().fit(train, train["Survived"])
    known = fitted.known
    assert 0 < len(known.family_surnames) < serving["Name"].str.split(",").str[0].nunique()  # some are skipped
    every = features.Known(ticket_counts=known.ticket_counts, groups=known.groups)
    every.__dict__["family_surnames"] = Everyone()  # what group_keys made before it skipped any

    raws = fitted._raw_rows(serving)
    # repr: NaN features compare equal only as text
    assert repr(features.engineer_raws(raws, known=known)) == repr(features.engineer_raws(raws, known=every))


FAMILY = [  # one ticket: a mother, a daughter, a son (Master) and the father
    passenger(Name="Dean, Mrs. Bertram", Sex="female", Ticket="D1", Fare=20.0),
    passenger(Name="Dean, Miss. Elizabeth", Sex="female", Ticket="D1", Fare=20.0),
    passenger(Name="Dean, Master. Bertram", Sex="male", Ticket="D1", Fare=20.0),
    passenger(Name="Dean, Mr. Bertram", Sex="male", Ticket="D1", Fare=20.0),
]


def test_count_groups_tallies_women_and_children_only() -> None:
    raws = [tuple(p.get(c) for c in features.RAW_COLUMNS) for p in FAMILY]
    groups = features.count_groups(raws, [1, 1, 0, 0])
    assert groups == {"T D1": (3, 2), "F dean 3 20.00": (3, 2)}


def test_a_new_passenger_sees_whether_the_groups_women_and_children_all_lived() -> None:
    lived = PassengerFeatures().fit(frame(*FAMILY), [1, 1, 1, 0])
    mixed = PassengerFeatures().fit(frame(*FAMILY), [1, 0, 1, 0])
    died = PassengerFeatures().fit(frame(*FAMILY), [0, 0, 0, 1])
    new = frame(passenger(Name="Dean, Miss. Vera", Sex="female", Ticket="D1", Fare=20.0))
    assert lived.transform(new).loc[0, ["WCGroupLived", "WCGroupDied"]].tolist() == [1.0, 0.0]
    assert mixed.transform(new).loc[0, ["WCGroupLived", "WCGroupDied"]].tolist() == [0.0, 0.0]
    assert died.transform(new).loc[0, ["WCGroupLived", "WCGroupDied"]].tolist() == [0.0, 1.0]


def test_a_surname_with_the_same_class_and_fare_joins_a_group_without_the_ticket() -> None:
    step = PassengerFeatures().fit(frame(*FAMILY), [1, 1, 1, 0])
    out = step.transform(
        frame(
            passenger(Name="Dean, Master. Tom", Sex="male", Ticket="OTHER", Fare=20.0),  # same class and fare
            passenger(Name="Dean, Master. Tom", Sex="male", Ticket="OTHER", Fare=21.0),  # another fare
            passenger(Name="Dean, Master. Tom", Sex="male", Ticket="OTHER", Fare=20.0, Pclass=1),
        )
    )
    assert out["WCGroupLived"].tolist() == [1.0, 0.0, 0.0]


def test_a_training_passenger_never_sees_its_own_label() -> None:
    """Leave-one-out: flipping one training label never changes that passenger's own features."""
    labels = [1, 1, 0, 0]
    base = PassengerFeatures().fit_transform(frame(*FAMILY), labels)
    for i in range(len(FAMILY)):
        flipped = list(labels)
        flipped[i] = 1 - flipped[i]
        out = PassengerFeatures().fit_transform(frame(*FAMILY), flipped)
        assert out.loc[i].tolist() == base.loc[i].tolist(), i


def test_training_and_serving_see_the_same_group_outcome() -> None:
    """A training row's group features equal those of the same passenger served by a model fitted on the others."""
    labels = [1, 1, 0, 0]
    trained = PassengerFeatures().fit_transform(frame(*FAMILY), labels)
    for i, row in enumerate(FAMILY):
        others = FAMILY[:i] + FAMILY[i + 1 :]
        served = PassengerFeatures().fit(frame(*others), labels[:i] + labels[i + 1 :]).transform(frame(row))
        for name in ("WCGroupLived", "WCGroupDied", "TicketGroupSize"):
            assert served.loc[0, name] == trained.loc[i, name], (i, name)


def test_fitting_without_labels_knows_no_group_outcomes() -> None:
    out = PassengerFeatures().fit_transform(frame(*FAMILY))
    assert out["WCGroupLived"].tolist() == [0.0] * 4
    assert out["WCGroupDied"].tolist() == [0.0] * 4


def test_a_padded_sex_is_the_same_sex_in_every_feature() -> None:
    """A training file's " female" was learned as a category of its own (serving strips it: unseen),
    and, unstripped beside count_groups' stripped one, let a woman's own label into her group features."""
    labels = [1, 1, 0, 0]
    pads = [" {}", "{} ", "\t{}", " {} "]
    padded = [{**p, "Sex": pad.format(p["Sex"])} for p, pad in zip(FAMILY, pads, strict=True)]

    trained = PassengerFeatures().fit_transform(frame(*padded), labels)

    assert trained.equals(PassengerFeatures().fit_transform(frame(*FAMILY), labels))
    assert trained["Sex"].tolist() == [p["Sex"] for p in FAMILY]
    served = PassengerFeatures().fit(frame(*padded), labels).transform(frame(*padded))
    assert served.equals(PassengerFeatures().fit(frame(*FAMILY), labels).transform(frame(*FAMILY)))


@pytest.mark.parametrize("sex", [None, math.nan, "", "  "])
def test_a_missing_sex_is_unknown(sex: Any) -> None:
    out = PassengerFeatures().fit(frame(passenger())).transform(frame(passenger(Sex=sex)))
    assert out.loc[0, "Sex"] == "Unknown"
