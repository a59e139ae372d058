"""The drift arithmetic: PSI, its bands, the binning, the tests and the minimum window."""

from __future__ import annotations

import math

import numpy as np
import pytest

from titanic_web import drift
from titanic_web.drift import EPSILON, Reference, band, psi

AGES = [float(a) for a in range(1, 81)] * 10  # 800 training ages, flat from 1 to 80
SEXES = ["male"] * 500 + ["female"] * 300
SIBSP = [0.0] * 500 + [1.0] * 200 + [2.0] * 60 + [3.0] * 40


def reference() -> Reference:
    return Reference.from_columns(
        {"Age": AGES, "Sex": SEXES, "SibSp": SIBSP},
        numeric=["Age", "SibSp"],
        categorical=["Sex"],
    )


def by_feature(results: list[drift.FeatureDrift]) -> dict[str, drift.FeatureDrift]:
    return {r.feature: r for r in results}


# -- PSI -----------------------------------------------------------------------------------------


def test_identical_distributions_give_zero() -> None:
    assert psi([10, 20, 30, 40], [10, 20, 30, 40]) == 0.0
    assert psi([10, 20, 30, 40], [1, 2, 3, 4]) == pytest.approx(0.0, abs=1e-12)  # shares, not counts


def test_samples_of_one_distribution_give_about_zero() -> None:
    rng = np.random.default_rng(0)
    edges = np.quantile(rng.normal(size=5000), np.linspace(0.1, 0.9, 9))
    a = np.bincount(np.searchsorted(edges, rng.normal(size=20_000)), minlength=10)
    b = np.bincount(np.searchsorted(edges, rng.normal(size=20_000)), minlength=10)
    assert psi(a, b) < 0.01


def test_disjoint_distributions_give_a_large_value() -> None:
    value = psi([100, 0], [0, 100])
    # Each side puts everything where the other has nothing: twice (1 - eps) * ln(1 / eps).
    assert value == pytest.approx(2 * (1 - EPSILON) * math.log(1 / EPSILON))
    assert value > 10
    assert band(value) == "drift"


def test_a_known_shift_gives_the_textbook_value() -> None:
    expected = (0.6 - 0.5) * math.log(0.6 / 0.5) + (0.4 - 0.5) * math.log(0.4 / 0.5)
    assert psi([50, 50], [60, 40]) == pytest.approx(expected)


def test_empty_bins_are_handled() -> None:
    assert psi([5, 5, 0], [5, 5, 0]) == 0.0  # empty on both sides: contributes nothing
    one_sided = psi([10, 0], [5, 5])
    assert math.isfinite(one_sided) and one_sided > 0.25
    # The empty bin counts as EPSILON, so the value is exactly computable.
    p, q = np.array([1.0, EPSILON]), np.array([0.5, 0.5])
    assert one_sided == pytest.approx(float(np.sum((q - p) * np.log(q / p))))


def test_psi_is_symmetric() -> None:
    assert psi([30, 50, 20], [10, 40, 50]) == pytest.approx(psi([10, 40, 50], [30, 50, 20]))


@pytest.mark.parametrize(
    ("expected", "actual", "message"),
    [
        ([1, 2], [1, 2, 3], "one length"),
        ([], [], "one length"),
        ([0, 0], [1, 1], "at least one count"),
        ([1, -1], [1, 1], "negative"),
    ],
)
def test_bad_count_vectors_are_refused(expected: list[int], actual: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        psi(expected, actual)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.0, "stable"), (0.0999, "stable"), (0.1, "moderate"), (0.25, "moderate"), (0.2501, "drift"), (18.0, "drift")],
)
def test_bands(value: float, expected: str) -> None:
    assert band(value) == expected


# -- features against a reference ----------------------------------------------------------------


def test_the_training_data_against_itself_is_stable() -> None:
    results = by_feature(reference().compare({"Age": AGES, "Sex": SEXES, "SibSp": SIBSP}, min_rows=200))

    for result in results.values():
        assert result.psi == pytest.approx(0.0, abs=1e-12)
        assert result.band == "stable"
        assert result.p_value == pytest.approx(1.0)
    assert (results["Age"].test, results["Sex"].test) == ("KS", "chi-squared")


def test_disjoint_numeric_values_drift_and_ks_sees_it() -> None:
    served = {"Age": [95.0] * 300, "Sex": ["male"] * 150 + ["female"] * 150}
    results = by_feature(reference().compare(served, min_rows=200))

    age = results["Age"]
    assert age.band == "drift" and age.psi is not None and age.psi > 1
    assert age.statistic == pytest.approx(1.0)  # every served age is above every training age
    assert age.p_value is not None and age.p_value < 1e-10
    # Sex moved from 62.5% male to 50%: measurable, not drift.
    moved = (0.5 - 0.375) * math.log(0.5 / 0.375) + (0.5 - 0.625) * math.log(0.5 / 0.625)
    assert results["Sex"].psi == pytest.approx(moved)
    assert results["Sex"].band == "stable"


def test_a_category_never_seen_in_training_is_its_own_bin() -> None:
    results = by_feature(reference().compare({"Age": AGES[:300], "Sex": ["unknown"] * 300}, min_rows=200))

    sex = results["Sex"]
    assert sex.band == "drift"
    assert sex.p_value is not None and sex.p_value < 1e-10
    assert [b.label for b in sex.bins] == ["female", "male", "unknown"]
    assert [b.reference for b in sex.bins] == pytest.approx([0.375, 0.625, 0.0])
    assert [b.current for b in sex.bins] == pytest.approx([0.0, 0.0, 1.0])


def test_missing_values_have_a_bin_of_their_own() -> None:
    results = by_feature(reference().compare({"Age": [None] * 300, "Sex": ["male"] * 300}, min_rows=200))

    age = results["Age"]
    assert age.bins[-1].label == drift.MISSING
    assert age.bins[-1].current == 1.0 and age.bins[-1].reference == 0.0
    assert age.band == "drift"
    assert age.statistic is None and age.p_value is None  # KS needs at least one value


def test_each_value_of_a_discrete_feature_is_a_bin() -> None:
    # Deciles would lump 1, 2 and 3 siblings into one bin; a shift from 1 to 3 must show.
    ref = reference()
    sibsp = ref.features["SibSp"]
    assert isinstance(sibsp, drift.NumericReference)
    assert sibsp.edges == (0.0, 1.0, 2.0, 3.0)
    served = [0.0] * 500 + [3.0] * 300
    result = by_feature(ref.compare({"Age": AGES, "Sex": SEXES, "SibSp": served}, min_rows=200))["SibSp"]
    assert result.band == "drift"


def test_shares_per_bin_add_up() -> None:
    served = {"Age": [20.0, 30.0, 40.0] * 100, "Sex": SEXES[:300]}
    result = by_feature(reference().compare(served, min_rows=200))["Age"]
    assert sum(b.reference for b in result.bins) == pytest.approx(1.0)
    assert sum(b.current for b in result.bins) == pytest.approx(1.0)


# -- the minimum window --------------------------------------------------------------------------


def test_below_the_minimum_there_are_no_numbers() -> None:
    results = reference().compare({"Age": [95.0] * 199, "Sex": ["male"] * 199}, min_rows=200)

    for result in results:
        assert (result.rows, result.enough) == (199, False)
        assert (result.psi, result.band, result.statistic, result.p_value, result.bins) == (None, None, None, None, ())


def test_at_the_minimum_there_are() -> None:
    results = by_feature(reference().compare({"Age": [95.0] * 200, "Sex": ["male"] * 200}, min_rows=200))

    assert results["Age"].enough and results["Age"].band == "drift"
    assert results["Sex"].psi is not None


def test_an_empty_window_has_no_numbers() -> None:
    results = reference().compare({}, min_rows=1)
    assert [(r.feature, r.rows, r.psi) for r in results] == [("Age", 0, None), ("SibSp", 0, None), ("Sex", 0, None)]


def test_training_columns_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        Reference.from_columns({"Age": [1.0, 2.0], "Sex": ["male"]}, numeric=["Age"], categorical=["Sex"])
