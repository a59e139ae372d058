"""An explanation as a small bar chart: which features pushed the survival probability up or down.

Geometry only (numbers in, SVG coordinates out); ``templates/_explanation.html``
draws it as inline SVG, so the result page needs no script to show it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from titanic_web.compiled import Explanation

#: How a feature reads on the result page.
LABELS = {
    "Pclass": "Class",
    "Age": "Age",
    "SibSp": "Siblings/spouses aboard",
    "Parch": "Parents/children aboard",
    "FamilySize": "Family size",
    "IsAlone": "Travelling alone",
    "CabinKnown": "Cabin known",
    "Fare": "Fare",
    "FarePerPerson": "Fare per person",
    "TicketGroupSize": "People on the ticket",
    "WCGroupLived": "Group's women and children all lived",
    "WCGroupDied": "Group's women and children all died",
    "Sex": "Sex",
    "Title": "Title",
    "Deck": "Deck",
    "Embarked": "Embarked",
}
_YES_NO = frozenset({"IsAlone", "CabinKnown", "WCGroupLived", "WCGroupDied"})

WIDTH = 640.0
LABEL_RIGHT = 300.0  # labels end here (text-anchor end)
PLOT_LEFT, PLOT_RIGHT = 310.0, 560.0
ROW = 24.0
BAR = 14.0
TOP = 8.0


@dataclass(frozen=True)
class ExplanationBar:
    """One row of the chart: a feature, its value, and its bar from the zero line."""

    label: str
    amount: str
    x: float
    y: float
    width: float
    css: str  # "up" or "down"
    text_x: float


@dataclass(frozen=True)
class ExplanationChart:
    """The chart: its rows, the zero line, its size and the caption's numbers."""

    bars: tuple[ExplanationBar, ...]
    zero: float
    width: float
    height: float
    scale: str
    base: str


def value_text(feature: str, value: Any) -> str:
    """An engineered value as a person reads it."""
    if value is None:
        return "unknown"
    if feature in _YES_NO:
        return "yes" if value else "no"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:g}"
    return str(value)


def _amount(contribution: float, scale: str) -> str:
    if scale == "probability":
        return f"{contribution * 100:+.1f} pts"
    return f"{contribution:+.2f}"


def explanation_chart(explanation: Explanation, *, top: int = 8) -> ExplanationChart:
    """Lay out the ``top`` largest contributions (the rest summed into one row) as horizontal bars."""
    shown = list(explanation.contributions[:top])
    rows = [(f"{LABELS.get(c.feature, c.feature)}: {value_text(c.feature, c.value)}", c.contribution) for c in shown]
    rest = explanation.contributions[top:]
    if rest:
        rows.append((f"{len(rest)} other features", sum(c.contribution for c in rest)))
    largest = max((abs(amount) for _, amount in rows), default=0.0) or 1.0
    zero = (PLOT_LEFT + PLOT_RIGHT) / 2
    half = (PLOT_RIGHT - PLOT_LEFT) / 2
    bars = []
    for i, (label, amount) in enumerate(rows):
        length = abs(amount) / largest * half
        up = amount >= 0
        x = zero if up else zero - length
        bars.append(
            ExplanationBar(
                label=label,
                amount=_amount(amount, explanation.scale),
                x=round(x, 2),
                y=round(TOP + i * ROW, 2),
                width=round(max(length, 0.5), 2),
                css="up" if up else "down",
                text_x=round(zero + length + 4 if up else zero - length - 4, 2),
            )
        )
    return ExplanationChart(
        bars=tuple(bars),
        zero=zero,
        width=WIDTH,
        height=TOP * 2 + len(rows) * ROW,
        scale=explanation.scale,
        base=_amount(explanation.base, explanation.scale).lstrip("+"),
    )
