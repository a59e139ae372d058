"""JSON text of flat records, many at once: what ``json.dumps(record, separators=(",", ":"))`` writes.

The feature store keeps each passenger's engineered features as a JSON object
(numbers, then texts). A batch writes one per passenger, so :func:`objects`
works a column at a time: most columns hold few distinct values, and each is
written once. Numbers are floats, NaN written ``null`` (the feature store's
None); texts are written as ``json.dumps`` writes them (ASCII, escaped).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: At most this many values are remembered per kind (a bound on memory).
REMEMBERED = 10_000

#: Numbers already written: a float's shortest repr costs thousands of instructions, and most
#: features take few values. NaN is never kept (no key finds it); -0.0 finds the entry of 0.0,
#: which is there from the start, and is told apart by its sign.
_NUMBERS: dict[float, str] = {0.0: "0.0"}
#: Texts already written: categorical values come from small sets.
_TEXTS: dict[str, str] = {}


def float_text(value: float) -> str:
    """A float as JSON text: its shortest repr, ``null`` for NaN."""
    return "null" if value != value else float.__repr__(value)


def number(value: float) -> str:
    """:func:`float_text`, remembered."""
    text = _NUMBERS.get(value)
    if text is None:
        text = float_text(value)
        if value == value and len(_NUMBERS) < REMEMBERED:
            _NUMBERS[value] = text
    elif text == "0.0" and math.copysign(1.0, value) < 0.0:
        return "-0.0"
    return text


def numbers(values: Sequence[float]) -> list[str]:
    """:func:`number` of each value, without a call for each one already written (a zero is
    told by its sign, NaN is never found)."""
    get = _NUMBERS.get
    return [(get(v) or number(v)) if v else ("0.0" if math.copysign(1.0, v) > 0.0 else "-0.0") for v in values]


def strings(values: Sequence[str]) -> list[str]:
    """:func:`string` of each value, without a call for each one already written."""
    get = _TEXTS.get
    return [get(v) or string(v) for v in values]


def string(value: str) -> str:
    """A text as JSON text (``json.dumps``), remembered."""
    encoded = _TEXTS.get(value)
    if encoded is None:
        encoded = json.dumps(value)
        if len(_TEXTS) < REMEMBERED:
            _TEXTS[value] = encoded
    return encoded


def join_pieces(columns: Sequence[Sequence[str]]) -> list[str]:
    """One JSON object per row from its pieces, a column of them per part of the object:
    ``"{" + ",".join(the row's piece in each column) + "}"``."""
    return list(map("{%s}".__mod__, map(",".join, zip(*columns, strict=True))))


def objects(
    number_names: Sequence[str],
    numbers: Sequence[Sequence[float]],
    text_names: Sequence[str],
    texts: Sequence[Sequence[str]],
) -> list[str]:
    """One JSON object per row, from columns: the numbers (floats) under ``number_names``,
    then the texts under ``text_names``, in that order.

    :raise ValueError: the names and columns do not match, or the columns differ in length.
    """
    names = [*number_names, *text_names]
    columns: list[Sequence[Any]] = [*numbers, *texts]
    if len(number_names) != len(numbers) or len(text_names) != len(texts) or not names:
        raise ValueError(f"{len(names)} names for {len(columns)} columns")
    count = len(columns[0])
    parts: list[list[str]] = []
    for position, (name, column) in enumerate(zip(names, columns, strict=True)):
        if len(column) != count:
            raise ValueError(f"column {name!r} has {len(column)} values, not {count}")
        # Each value's text carries its key and the punctuation around it: a row is then one join.
        head = ("{" if position == 0 else ",") + json.dumps(name) + ":"
        tail = "}" if position == len(columns) - 1 else ""
        if position >= len(numbers):
            known = {value: head + string(value) + tail for value in set(column)}
            parts.append(list(map(known.__getitem__, column)))
            continue
        known = {value: head + float_text(value) + tail for value in set(column)}
        if 0.0 not in known:
            parts.append(list(map(known.__getitem__, column)))
            continue
        # 0.0 and -0.0 are one key but two texts: every zero is written 0.0, then the rare
        # negative ones, found by numpy, -0.0.
        known[0.0] = head + "0.0" + tail
        written = list(map(known.__getitem__, column))
        values = np.array(column, dtype=np.float64)
        negative_zero = head + "-0.0" + tail
        for at in np.flatnonzero((values == 0.0) & np.signbit(values)).tolist():
            written[at] = negative_zero
        parts.append(written)
    return list(map("".join, zip(*parts, strict=True)))
