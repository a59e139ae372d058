"""Passengers in and out of the competition's CSV layouts (test.csv in, submission out)."""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable
from typing import Any

from titanic_web import schema
from titanic_web.schema import FieldError, InputError


class CsvError(ValueError):
    """The body is not a readable CSV file (encoding, no header, too many rows)."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


def decode(data: bytes) -> str:
    """Decode an upload as UTF-8 (a byte-order mark is allowed).

    :raise CsvError: the bytes are not UTF-8.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CsvError(f"the CSV file must be UTF-8 text (bad byte at offset {exc.start})") from None


def reader_error(exc: csv.Error, *, start: int, end: int) -> str:
    """A csv reader's error as a message naming its lines: ``start`` the line the failing row
    began on, ``end`` the line the reader had reached (after a quote left open, a later one)."""
    if str(exc) == "unexpected end of data":  # strict: the file ended in a quoted cell
        return f"line {start}: a quoted cell is not closed (the file ends inside it, on line {end})"
    return f"line {end}: {exc}" + (f" (in the row that begins on line {start})" if start < end else "")


def check_header(header: list[str]) -> None:
    """A header names only known columns (or ignored ones, such as Survived), each once, and
    every required one.

    :raise InputError: the problems, each on line 1.
    """
    layout = _layout_problem(header)
    if layout is not None:
        raise InputError([FieldError(None, None, layout, line=1)])
    errors = [
        FieldError(None, name, schema.unknown_field_message(name), line=1)
        for name in header
        if name not in schema.FIELDS_BY_NAME and name not in schema.IGNORED_CSV_COLUMNS
    ]
    known = Counter(name for name in header if name in schema.FIELDS_BY_NAME or name in schema.IGNORED_CSV_COLUMNS)
    errors += [  # a column twice: which of its cells would count?
        FieldError(None, name, f"the header has the column '{name}' {times} times; give it once", line=1)
        for name, times in known.items()
        if times > 1
    ]
    errors += [
        FieldError(None, f.name, f"the header has no '{f.name}' column; it is required", line=1)
        for f in schema.FIELDS
        if f.required and f.name not in header
    ]
    if errors:
        raise InputError(errors)


def _layout_problem(header: list[str]) -> str | None:
    """What is wrong with a first line that is no header at all, as spreadsheets write one."""
    if not any(header):
        return f"line 1 is blank: the first line must be the header, such as {EXAMPLE_HEADER}"
    if header[0].lower().startswith("sep="):
        return "line 1 is a spreadsheet's separator line (sep=...): remove it; the first line must be the header"
    if len(header) == 1:
        for separator, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
            if any(part.strip() in schema.FIELDS_BY_NAME for part in header[0].split(separator)[1:]):
                return f"the header is separated by {name}: the file must be comma-separated, such as {EXAMPLE_HEADER}"
    return None


#: The start of the competition's header, for messages.
EXAMPLE_HEADER = "PassengerId,Pclass,Name,Sex,..."


def read_passengers(text: str, *, max_rows: int) -> list[dict[str, Any]]:
    """Parse and validate a competition-layout CSV; return clean passengers in order.

    Errors name the CSV line (the header is line 1).

    :raise CsvError: no header, a line the csv module cannot read, or more than max_rows passengers.
    :raise InputError: unknown, repeated or missing columns, or invalid cells.
    """
    # Strict: a quote left open is an error, not a cell that takes in every line after it.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise CsvError(f"the CSV file is empty: expected a header line such as {EXAMPLE_HEADER}") from None
    except csv.Error as exc:
        raise CsvError(reader_error(exc, start=1, end=reader.line_num)) from None
    check_header(header)

    passengers: list[dict[str, Any]] = []
    errors: list[FieldError] = []
    index = 0
    line = reader.line_num  # the line the last row read ends on
    try:
        for cells in reader:
            line = reader.line_num
            if not any(c.strip() for c in cells):
                continue  # blank line
            if index >= max_rows:
                raise CsvError(f"more than {max_rows} passengers in one request (MAX_ROWS)", too_large=True)
            if len(cells) != len(header):
                errors.append(
                    FieldError(index, None, f"has {len(cells)} cells, the header has {len(header)}", line=line)
                )
                passengers.append({})
                index += 1
                continue
            raw = schema.parse_text_row(dict(zip(header, cells, strict=True)))
            clean, row_errors = schema.validate_passenger(raw, index=index)
            errors.extend(FieldError(e.index, e.field, e.message, line=line) for e in row_errors)
            passengers.append(clean)
            index += 1
    except csv.Error as exc:
        raise CsvError(reader_error(exc, start=line + 1, end=reader.line_num)) from None
    if errors:
        raise InputError(errors)
    if not passengers:
        raise CsvError("the CSV file has a header but no passengers")
    return passengers


def submission(rows: Iterable[tuple[int | None, int]]) -> str:
    """A Kaggle submission: PassengerId,Survived per line."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["PassengerId", "Survived"])
    for passenger_id, survived in rows:
        writer.writerow(["" if passenger_id is None else passenger_id, survived])
    return out.getvalue()
