"""The explanation chart's geometry: bars from the zero line, in proportion, the rest summed."""

from __future__ import annotations

import pytest

from titanic_web.compiled import Contribution, Explanation
from titanic_web.web.explanation import PLOT_LEFT, PLOT_RIGHT, explanation_chart, value_text


def explanation(*amounts: float, scale: str = "log-odds") -> Explanation:
    contributions = tuple(Contribution(f"F{i}", float(i), a) for i, a in enumerate(amounts))
    return Explanation(base=-0.5, output=-0.5 + sum(amounts), scale=scale, contributions=contributions)


def test_bars_start_at_the_zero_line_and_scale_with_the_largest() -> None:
    chart = explanation_chart(explanation(2.0, -1.0, 0.5))
    zero = (PLOT_LEFT + PLOT_RIGHT) / 2
    half = (PLOT_RIGHT - PLOT_LEFT) / 2
    up, down, small = chart.bars
    assert (up.css, up.x, up.width) == ("up", zero, half)
    assert (down.css, down.x + down.width, down.width) == ("down", zero, half / 2)
    assert small.width == pytest.approx(half / 4)
    assert [b.amount for b in chart.bars] == ["+2.00", "-1.00", "+0.50"]
    assert [b.y for b in chart.bars] == sorted(b.y for b in chart.bars)
    assert chart.base == "-0.50"


def test_beyond_the_top_rows_the_rest_are_summed_into_one() -> None:
    chart = explanation_chart(explanation(*[1.0] * 3, 0.25, 0.25), top=3)
    assert len(chart.bars) == 4
    assert chart.bars[-1].label == "2 other features"
    assert chart.bars[-1].amount == "+0.50"


def test_a_forest_reads_in_percentage_points() -> None:
    chart = explanation_chart(explanation(0.12, -0.03, scale="probability"))
    assert [b.amount for b in chart.bars] == ["+12.0 pts", "-3.0 pts"]


def test_all_zero_contributions_draw_without_dividing_by_zero() -> None:
    chart = explanation_chart(explanation(0.0, 0.0))
    assert all(b.width > 0 for b in chart.bars)


@pytest.mark.parametrize(
    ("feature", "value", "text"),
    [
        ("Age", None, "unknown"),
        ("IsAlone", 1.0, "yes"),
        ("WCGroupDied", 0.0, "no"),
        ("Pclass", 3.0, "3"),
        ("Fare", 7.8292, "7.8292"),
        ("Sex", "female", "female"),
    ],
)
def test_value_text(feature: str, value: object, text: str) -> None:
    assert value_text(feature, value) == text
