"""Chart geometry for the dashboard: numbers in, SVG coordinates out; templates draw them.

Pure Python, no Flask: the dashboard's charts are drawn on the server as inline
SVG (``templates/_charts.html``), so they need no script and no network, and
read the same with JavaScript off. Colours and fonts come from CSS classes in
``static/style.css``; nothing here writes a style attribute.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

#: Room around the plot for the axis labels, in SVG units.
LEFT, RIGHT, TOP, BOTTOM = 44.0, 10.0, 10.0, 34.0


@dataclass(frozen=True)
class Tick:
    """An axis label at a position along its axis."""

    position: float
    label: str


@dataclass(frozen=True)
class Bar:
    """A bar, with the text its tooltip shows."""

    x: float
    y: float
    width: float
    height: float
    label: str
    css: str = ""


@dataclass(frozen=True)
class Dot:
    """A point of a line, with the text its tooltip shows."""

    x: float
    y: float
    label: str


@dataclass(frozen=True)
class Chart:
    """A drawn chart: the plot area, its bars or lines, and the axes' ticks."""

    title: str
    width: float
    height: float
    left: float
    top: float
    right: float
    bottom: float
    bars: tuple[Bar, ...] = ()
    lines: tuple[str, ...] = ()  # polyline "x,y x,y ..." runs; a gap (no value) starts a new run
    dots: tuple[Dot, ...] = ()
    x_ticks: tuple[Tick, ...] = ()
    y_ticks: tuple[Tick, ...] = ()
    legend: tuple[tuple[str, str], ...] = field(default=())  # (css class, text)

    @property
    def empty(self) -> bool:
        """Nothing to draw (no bar has height and no line has a point)."""
        return not self.dots and not any(bar.height > 0 for bar in self.bars)


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is at least value (1 for 0)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if step * power >= value * (1 - 1e-12):
            return step * power
    return 10.0 * power  # pragma: no cover, the loop's last step always fits


def _frame(width: float, height: float) -> tuple[float, float, float, float]:
    return LEFT, TOP, width - RIGHT, height - BOTTOM


def tick_count(top_value: float) -> int:
    """How many steps from 0 to a nice_ceiling value keep every tick round (0.25 -> 5 steps of 0.05)."""
    mantissa = round(top_value / 10.0 ** math.floor(math.log10(top_value)), 6) if top_value > 0 else 1.0
    return 4 if mantissa == 2.0 else 5


def _y_ticks(
    top_value: float, top: float, bottom: float, fmt: Callable[[float], str], count: int | None = None
) -> tuple[Tick, ...]:
    count = count or tick_count(top_value)
    return tuple(Tick(bottom - (bottom - top) * i / count, fmt(top_value * i / count)) for i in range(count + 1))


def _x_ticks(labels: Sequence[str], centres: Sequence[float], most: int) -> tuple[Tick, ...]:
    """Every n-th label, so that at most ``most`` are written and they do not overlap."""
    if not labels:
        return ()
    every = max(1, math.ceil(len(labels) / most))
    return tuple(Tick(centres[i], labels[i]) for i in range(0, len(labels), every))


def bar_chart(
    values: Sequence[float],
    labels: Sequence[str],
    *,
    title: str,
    tooltips: Sequence[str] | None = None,
    width: float = 640,
    height: float = 200,
    y_format: Callable[[float], str] = lambda v: f"{v:g}",
    y_max: float | None = None,
    most_x_labels: int = 8,
    css: Sequence[str] | None = None,
) -> Chart:
    """Vertical bars, one per value, labelled below; y from 0 to a round number at or above the largest."""
    if len(values) != len(labels):
        raise ValueError(f"{len(values)} values but {len(labels)} labels")
    left, top, right, bottom = _frame(width, height)
    top_value = y_max if y_max is not None else nice_ceiling(max(values, default=0))
    slot = (right - left) / max(len(values), 1)
    gap = min(2.0, slot * 0.15)
    bars = []
    centres = []
    for i, value in enumerate(values):
        h = (bottom - top) * min(max(value, 0) / top_value, 1.0)
        x = left + i * slot + gap / 2
        centres.append(x + (slot - gap) / 2)
        tip = tooltips[i] if tooltips is not None else f"{labels[i]}: {y_format(value)}"
        bars.append(
            Bar(round(x, 2), round(bottom - h, 2), round(slot - gap, 2), round(h, 2), tip, css[i] if css else "")
        )
    return Chart(
        title,
        width,
        height,
        left,
        top,
        right,
        bottom,
        bars=tuple(bars),
        x_ticks=_x_ticks(labels, centres, most_x_labels),
        y_ticks=_y_ticks(top_value, top, bottom, y_format),
    )


def line_chart(
    values: Sequence[float | None],
    labels: Sequence[str],
    *,
    title: str,
    tooltips: Sequence[str] | None = None,
    width: float = 640,
    height: float = 200,
    y_max: float = 1.0,
    y_format: Callable[[float], str] = lambda v: f"{v:.0%}",
    most_x_labels: int = 8,
) -> Chart:
    """A line through the values (None leaves a gap), each point a dot with a tooltip; y from 0 to y_max."""
    if len(values) != len(labels):
        raise ValueError(f"{len(values)} values but {len(labels)} labels")
    left, top, right, bottom = _frame(width, height)
    slot = (right - left) / max(len(values), 1)
    runs: list[list[str]] = [[]]
    dots = []
    centres = []
    for i, value in enumerate(values):
        x = round(left + (i + 0.5) * slot, 2)
        centres.append(x)
        if value is None:
            if runs[-1]:
                runs.append([])
            continue
        y = round(bottom - (bottom - top) * min(max(value / y_max, 0.0), 1.0), 2)
        runs[-1].append(f"{x},{y}")
        tip = tooltips[i] if tooltips is not None else f"{labels[i]}: {y_format(value)}"
        dots.append(Dot(x, y, tip))
    return Chart(
        title,
        width,
        height,
        left,
        top,
        right,
        bottom,
        lines=tuple(" ".join(run) for run in runs if len(run) > 1),
        dots=tuple(dots),
        x_ticks=_x_ticks(labels, centres, most_x_labels),
        y_ticks=_y_ticks(y_max, top, bottom, y_format),
    )


def paired_bar_chart(
    pairs: Sequence[tuple[float, float]],
    labels: Sequence[str],
    *,
    title: str,
    names: tuple[str, str],
    width: float = 640,
    height: float = 180,
    y_format: Callable[[float], str] = lambda v: f"{v:.0%}",
    most_x_labels: int = 12,
    tick_labels: Sequence[str] | None = None,
) -> Chart:
    """Two bars per label (say, training and served shares), side by side, with a legend.

    ``tick_labels`` (shorter) are written under the bars instead of ``labels``, which the tooltips keep.
    """
    if len(pairs) != len(labels):
        raise ValueError(f"{len(pairs)} pairs but {len(labels)} labels")
    left, top, right, bottom = _frame(width, height)
    bottom -= 14  # room for the legend under the axis labels
    top_value = nice_ceiling(max((max(a, b) for a, b in pairs), default=0))
    slot = (right - left) / max(len(pairs), 1)
    gap = min(4.0, slot * 0.2)
    half = (slot - gap) / 2
    bars = []
    centres = []
    for i, pair in enumerate(pairs):
        x0 = left + i * slot + gap / 2
        centres.append(x0 + half)
        for j, value in enumerate(pair):
            h = (bottom - top) * min(max(value, 0) / top_value, 1.0)
            bars.append(
                Bar(
                    round(x0 + j * half, 2),
                    round(bottom - h, 2),
                    round(half, 2),
                    round(h, 2),
                    f"{labels[i]}, {names[j]}: {y_format(value)}",
                    ("first", "second")[j],
                )
            )
    return Chart(
        title,
        width,
        height,
        left,
        top,
        right,
        bottom,
        bars=tuple(bars),
        x_ticks=_x_ticks(tick_labels or labels, centres, most_x_labels),
        y_ticks=_y_ticks(top_value, top, bottom, y_format),
        legend=(("first", names[0]), ("second", names[1])),
    )
