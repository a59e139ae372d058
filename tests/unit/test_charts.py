"""Chart geometry: bars and lines scaled into the plot, gaps, axis labels."""

from __future__ import annotations

import itertools

import pytest

from titanic_web import charts


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 1.0), (0.3, 0.5), (1, 1.0), (7, 10.0), (11, 20.0), (24, 25.0), (26, 50.0), (100, 100.0), (1234, 2000.0)],
)
def test_nice_ceiling(value: float, expected: float) -> None:
    assert charts.nice_ceiling(value) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("top", "labels"),
    [
        (1.0, ["0", "0.2", "0.4", "0.6", "0.8", "1"]),
        (0.25, ["0", "0.05", "0.1", "0.15", "0.2", "0.25"]),
        (20.0, ["0", "5", "10", "15", "20"]),
        (500.0, ["0", "100", "200", "300", "400", "500"]),
    ],
)
def test_y_ticks_are_round(top: float, labels: list[str]) -> None:
    chart = charts.bar_chart([top], ["a"], title="t")
    assert [t.label for t in chart.y_ticks] == labels
    assert chart.y_ticks[0].position == pytest.approx(chart.bottom)
    assert chart.y_ticks[-1].position == pytest.approx(chart.top)


def test_bars_are_scaled_to_the_plot() -> None:
    chart = charts.bar_chart([0, 5, 10], ["a", "b", "c"], title="t")

    heights = [bar.height for bar in chart.bars]
    plot_height = chart.bottom - chart.top
    assert heights[0] == 0
    assert heights[2] == pytest.approx(plot_height)  # 10 is the axis' top
    assert heights[1] == pytest.approx(plot_height / 2, abs=0.01)
    for bar in chart.bars:
        assert bar.y + bar.height == pytest.approx(chart.bottom)
        assert chart.left <= bar.x and bar.x + bar.width <= chart.right + 1e-9
    xs = [bar.x for bar in chart.bars]
    assert all(b.x >= a.x + a.width for a, b in itertools.pairwise(chart.bars)), "bars overlap"
    assert xs == sorted(xs)
    assert [t.label for t in chart.y_ticks] == ["0", "2", "4", "6", "8", "10"]
    assert chart.bars[1].label == "b: 5"
    assert not chart.empty


def test_all_zero_is_empty() -> None:
    chart = charts.bar_chart([0, 0], ["a", "b"], title="t")
    assert chart.empty


def test_x_labels_are_thinned() -> None:
    labels = [f"{i:02d}:00" for i in range(60)]
    chart = charts.bar_chart([1.0] * 60, labels, title="t", most_x_labels=8)

    assert 1 < len(chart.x_ticks) <= 8
    assert chart.x_ticks[0].label == "00:00"
    positions = [t.position for t in chart.x_ticks]
    assert positions == sorted(positions)


def test_line_leaves_gaps_for_missing_values() -> None:
    chart = charts.line_chart([0.5, 0.25, None, 1.0, 0.0], list("abcde"), title="t")

    assert len(chart.dots) == 4
    assert len(chart.lines) == 2  # a-b, then d-e: c is a gap
    first = [tuple(map(float, p.split(","))) for p in chart.lines[0].split()]
    plot_height = chart.bottom - chart.top
    assert first[0][1] == pytest.approx(chart.bottom - plot_height * 0.5, abs=0.01)
    assert first[1][1] == pytest.approx(chart.bottom - plot_height * 0.25, abs=0.01)
    assert chart.dots[2].y == pytest.approx(chart.top)  # 1.0 is the top of a 0..1 axis
    assert chart.y_ticks[-1].label == "100%"


def test_line_of_nothing_is_empty() -> None:
    assert charts.line_chart([None, None], ["a", "b"], title="t").empty


def test_paired_bars_sit_side_by_side_with_a_legend() -> None:
    chart = charts.paired_bar_chart([(0.5, 0.25), (0.5, 0.75)], ["x", "y"], title="t", names=("training", "served"))

    assert [bar.css for bar in chart.bars] == ["first", "second", "first", "second"]
    first, second = chart.bars[0], chart.bars[1]
    assert second.x == pytest.approx(first.x + first.width)
    assert first.height == pytest.approx(2 * second.height, abs=0.02)
    assert chart.bars[0].label == "x, training: 50%"
    assert chart.legend == (("first", "training"), ("second", "served"))


def test_values_and_labels_must_match() -> None:
    with pytest.raises(ValueError, match="2 values but 1 labels"):
        charts.bar_chart([1, 2], ["a"], title="t")
