"""The passenger input: one definition of fields, types, ranges and defaults.

The JSON API validates parsed JSON values with :func:`validate_passengers`; the
HTML form and CSV uploads hand in text, which :func:`parse_text_row` turns into
the same values first. The form's fields are built from :data:`FIELDS` too.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from json.encoder import encode_basestring_ascii  # what _encode_text does with a str
from typing import Any

from titanic_web import jsontext


@dataclass(frozen=True)
class Field:
    """One passenger field, as the Kaggle competition names it."""

    name: str
    kind: type  # int, float or str
    label: str
    hint: str
    required: bool = False
    nullable: bool = False  # may be null: the competition data has gaps here
    default: Any = None  # value when omitted
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[tuple[Any, str], ...] = ()  # (value, label)
    max_length: int | None = None
    form_default: Any = None  # what the HTML form starts with
    placeholder: str = ""

    def describe(self) -> str:
        """Say in words what a valid value is, for error messages."""
        if self.choices:
            return "one of " + ", ".join(repr(value) for value, _ in self.choices)
        noun = {int: "a whole number", float: "a number", str: "text"}[self.kind]
        if self.minimum is not None and self.maximum is not None:
            return f"{noun} from {_num(self.minimum)} to {_num(self.maximum)}"
        if self.minimum is not None:
            return f"{noun} of at least {_num(self.minimum)}"
        if self.max_length is not None:
            return f"{noun} of at most {self.max_length} characters"
        return noun


#: Whole numbers longer than this are not written out in messages, only said to be out of range.
SHOWN_DIGITS = 20


def _num(value: float) -> str:
    """A number as a message shows it. A whole number is never turned into a float, which
    fails above 1e308 (JSON reads whole numbers of up to 4,300 digits), nor written out
    when it is very long."""
    if isinstance(value, int):
        if -(10**SHOWN_DIGITS) < value < 10**SHOWN_DIGITS:
            return str(value)
        sign = "a negative" if value < 0 else "a"
        try:
            return f"{sign} whole number out of range ({len(str(abs(value)))} digits)"
        except ValueError:  # more digits than str() writes (sys.get_int_max_str_digits())
            return f"{sign} whole number out of range"
    return str(int(value)) if value.is_integer() else str(value)


FIELDS: tuple[Field, ...] = (
    Field(
        "PassengerId",
        int,
        "Passenger id",
        "Optional; echoed back with the prediction.",
        placeholder="e.g. 892",
        minimum=1,
        maximum=2**31 - 1,
        nullable=True,
    ),
    Field(
        "Pclass",
        int,
        "Ticket class",
        "1st, 2nd or 3rd class.",
        required=True,
        form_default=3,
        minimum=1,
        maximum=3,
        choices=((1, "1st class"), (2, "2nd class"), (3, "3rd class")),
    ),
    Field(
        "Sex",
        str,
        "Sex",
        "As recorded on the passenger list.",
        required=True,
        form_default="female",
        choices=(("male", "male"), ("female", "female")),
    ),
    Field(
        "Name",
        str,
        "Name",
        'As "Surname, Title. Given names"; the title matters.',
        default="",
        placeholder="Kelly, Mrs. Anna",
        max_length=200,
    ),
    Field(
        "Age",
        float,
        "Age",
        "Years; fractions below 1. Leave empty if unknown.",
        nullable=True,
        form_default=30,
        minimum=0,
        maximum=120,
    ),
    Field(
        "SibSp",
        int,
        "Siblings / spouses aboard",
        "How many travelled with the passenger.",
        default=0,
        form_default=0,
        minimum=0,
        maximum=20,
    ),
    Field(
        "Parch",
        int,
        "Parents / children aboard",
        "How many travelled with the passenger.",
        default=0,
        form_default=0,
        minimum=0,
        maximum=20,
    ),
    Field(
        "Ticket",
        str,
        "Ticket",
        "Ticket number; shared tickets mark travelling groups.",
        default="",
        placeholder="A/5 21171",
        max_length=50,
    ),
    Field(
        "Fare",
        float,
        "Fare",
        "Price of the whole ticket, in pounds. Leave empty if unknown.",
        nullable=True,
        form_default=8.05,
        minimum=0,
        maximum=10_000,
    ),
    Field(
        "Cabin",
        str,
        "Cabin",
        "Deck letter first. Leave empty if unknown.",
        nullable=True,
        placeholder="C85",
        max_length=50,
    ),
    Field(
        "Embarked",
        str,
        "Port of embarkation",
        "Where the passenger boarded.",
        nullable=True,
        form_default="S",
        choices=(("C", "Cherbourg"), ("Q", "Queenstown"), ("S", "Southampton")),
    ),
)
FIELDS_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
FIELD_NAMES: tuple[str, ...] = tuple(FIELDS_BY_NAME)
#: Columns a CSV upload may carry beyond the input fields (train.csv's label).
IGNORED_CSV_COLUMNS = frozenset({"Survived"})


@dataclass(frozen=True)
class FieldError:
    """A problem with one field of one passenger (index None: the whole request)."""

    index: int | None
    field: str | None
    message: str
    line: int | None = None  # the CSV line, for uploads

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "field": self.field, "message": self.message}
        if self.line is not None:
            out["line"] = self.line
        return out


#: Errors a 422 lists at most; its error_count says how many there were in all.
MAX_LISTED_ERRORS = 1000

#: Control characters (Unicode's Cc) that are not white space: no name, ticket or cabin holds one,
#: and a page cannot show one (HTML refuses NUL; an escape sequence shows as garbage).
#: White space controls (tab, new line, U+001C-U+001F, U+0085) stay: strip() removes them around text.
CONTROL_CHARACTERS = "\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f"
_CONTROL = re.compile(f"[{CONTROL_CHARACTERS}]")


def control_message(text: str) -> str | None:
    """The error for text holding a control character that is not white space, or None."""
    if text.isprintable():  # most text, at once (white space other than ' ' is not printable)
        return None
    found = _CONTROL.search(text)
    if found is None:
        return None
    return f"must not hold control characters, got U+{ord(found.group()):04X} at character {found.start() + 1}"


class InputError(Exception):
    """Schema check failed: the request answers 422 and stores nothing."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        super().__init__(f"{len(errors)} invalid field(s)")
        self.errors = list(errors)


def suggest(name: str) -> str | None:
    """Return the field name a misspelt or miscased one probably meant."""
    for known in FIELD_NAMES:
        if known.lower() == name.lower():
            return known
    matches = difflib.get_close_matches(name, FIELD_NAMES, n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_field_message(name: str) -> str:
    """Error text for a field the schema does not know, with the close match if any."""
    close = suggest(name)
    hint = f"; did you mean '{close}'?" if close else f"; known fields: {', '.join(FIELD_NAMES)}"
    return f"unknown field '{name}'{hint}"


def check_value(field: Field, value: Any) -> tuple[Any, str | None]:
    """Return (clean value, None) or (None, message) for one present value."""
    if value is None:
        if field.nullable:
            return None, None
        if field.required:
            return None, f"is required: {field.describe()}"
        return None, f"may be omitted but not null: {field.describe()}"
    if field.kind is str:
        if not isinstance(value, str):
            return None, f"must be {field.describe()}, got {type(value).__name__}"
        if not value.isascii():  # ASCII (most text) is known at once: it holds no surrogate
            message = surrogate_message(value)
            if message is not None:
                return None, message
        if not field.choices:  # a choice is refused as no choice
            message = control_message(value)
            if message is not None:
                return None, message
        value = value.strip()
        if field.nullable and value == "":  # blank text means unknown, as in the CSV files
            return None, None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, f"must be {field.describe()}, got {_json_type(value)}"
    elif field.kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                return None, f"must be {field.describe()}, got {value}"
            value = int(value)
    else:
        try:
            value = float(value)
        except OverflowError:  # a whole number beyond any float
            return None, f"must be {field.describe()}, got {_num(value)}"
        if not math.isfinite(value):
            return None, f"must be {field.describe()}, got {value}"
    if field.choices:
        allowed = [c for c, _ in field.choices]
        if value not in allowed:
            return None, f"must be {field.describe()}, got {_num(value) if field.kind is int else repr(value)}"
        return value, None
    if field.minimum is not None and value < field.minimum:
        return None, f"must be {field.describe()}, got {_num(value) if not isinstance(value, str) else value}"
    if field.maximum is not None and value > field.maximum:
        return None, f"must be {field.describe()}, got {_num(value)}"
    if field.max_length is not None and isinstance(value, str) and len(value) > field.max_length:
        return None, f"must be {field.describe()}, got {len(value)} characters"
    return value, None


def surrogate_message(text: str) -> str | None:
    """Why ``text`` is not valid Unicode text, or None if it is.

    A JSON string may escape half of a UTF-16 pair alone ("\\ud800"): Python reads it
    as a str holding an unpaired surrogate, which no UTF-8 text (a file, the database)
    can hold. One encode finds it: cheaper than a search for the surrogates. CSV
    bodies and forms are decoded from UTF-8, so only JSON strings can hold one.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        found = f"\\u{ord(text[exc.start]):04x}"
        return f"is not valid Unicode text: an unpaired surrogate ({found}) at character {exc.start + 1}"
    return None


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"text {value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def validate_passenger(raw: Any, *, index: int = 0) -> tuple[dict[str, Any], list[FieldError]]:
    """Check one passenger; return its clean values (every field present) and errors."""
    if not isinstance(raw, Mapping):
        return {}, [FieldError(index, None, f"a passenger must be a JSON object, got {_json_type(raw)}")]
    errors: list[FieldError] = []
    clean: dict[str, Any] = {}
    for name in raw:
        if name not in FIELDS_BY_NAME:
            errors.append(FieldError(index, str(name), unknown_field_message(str(name))))
    for field in FIELDS:
        if field.name not in raw:
            if field.required:
                errors.append(FieldError(index, field.name, f"is required: {field.describe()}"))
            clean[field.name] = field.default
            continue
        value, message = check_value(field, raw[field.name])
        if message:
            errors.append(FieldError(index, field.name, message))
        clean[field.name] = value
    return clean, errors


def validate_passengers(raws: Sequence[Any]) -> list[dict[str, Any]]:
    """Check every passenger and return the clean ones, or raise for all problems at once.

    :raise InputError: any passenger is invalid; it lists every error found.
    """
    clean_rows: list[dict[str, Any]] = []
    errors: list[FieldError] = []
    for index, raw in enumerate(raws):
        clean, row_errors = validate_passenger(raw, index=index)
        clean_rows.append(clean)
        errors.extend(row_errors)
    if errors:
        raise InputError(errors)
    return clean_rows


def parse_text(field: Field, text: str | None) -> Any:
    """Turn a form or CSV cell into a JSON-like value; "" means missing (None).

    A cell that is not a number where one is wanted is kept as text, so that
    validation reports it with the field's rule. A number is written as the
    competition's files and JSON write one: ASCII digits, no ``_`` (``float()``
    also reads ``1_000`` and other scripts' digits, which no other reader of
    the file would take for that number).
    """
    if text is None:
        return None
    text = text.strip()
    if text == "":
        return None
    if field.kind is str or not text.isascii() or "_" in text:
        return text
    try:
        number = float(text)
    except ValueError:
        return text
    if field.kind is int and number.is_integer():
        return int(number)
    return number


def parse_text_row(row: Mapping[str, str | None]) -> dict[str, Any]:
    """Turn a row of text cells (form or CSV) into JSON-like values.

    Empty cells of optional fields count as omitted, so they take the default;
    unknown columns are kept so that validation names them.
    """
    parsed: dict[str, Any] = {}
    for name, text in row.items():
        field = FIELDS_BY_NAME.get(name)
        if field is None:
            if name not in IGNORED_CSV_COLUMNS:
                parsed[name] = text
            continue
        value = parse_text(field, text)
        if value is None and not field.nullable and not field.required:
            continue  # empty optional cell: the default applies
        parsed[name] = value
    return parsed


def _json_fragment(name: str, value: Any) -> str:
    """'"name":value' exactly as json.dumps(separators=(",", ":")) writes that pair."""
    if value is None:
        return f'"{name}":null'
    if value.__class__ is int:
        return f'"{name}":{value}'
    if value.__class__ is float:
        return f'"{name}":{float.__repr__(value)}'
    return f'"{name}":{_encode_text(value)}'


_encode_text = json.JSONEncoder().encode


#: An omitted field takes its default, unchecked, as in validate_passenger: (value, None, JSON).
_DEFAULT_OUTCOMES = {f.name: (f.default, None, _json_fragment(f.name, f.default)) for f in FIELDS}


@dataclass(eq=False)
class CheckedRows:
    """A chunk of rows checked at once.

    ``columns`` (field name -> clean values) holds the valid rows in order, and
    ``parts`` their JSON by column: each of its columns holds, for every valid
    row, a piece of its object's text, so that a row's JSON (:attr:`texts`) is
    ``"{" + ",".join(its pieces) + "}"``. The pieces are JSON text (ASCII, control
    characters escaped). ``errors`` holds (position in the chunk, errors) for the
    invalid rows; ``kept`` the positions of every row that is a passenger (blank
    lines are not).
    """

    columns: dict[str, list[Any]]
    parts: list[Sequence[str]]
    errors: list[tuple[int, list[FieldError]]]
    kept: list[int]

    def __eq__(self, other: object) -> bool:
        """The same rows, values and JSON, however the JSON was cut into pieces."""
        if not isinstance(other, CheckedRows):
            return NotImplemented
        return (self.columns, self.texts, self.errors, self.kept) == (
            other.columns,
            other.texts,
            other.errors,
            other.kept,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, as a dataclass with eq

    @cached_property
    def texts(self) -> list[str]:
        """Each valid passenger's JSON, as ``json.dumps(clean, separators=(",", ":"))`` writes it."""
        return jsontext.join_pieces(self.parts)

    @classmethod
    def collect(cls, rows: Iterable[tuple[int, dict[str, Any], str, list[FieldError]]]) -> CheckedRows:
        """Gather rows checked one at a time: (position in the chunk, clean, JSON text, errors)."""
        clean_rows: list[dict[str, Any]] = []
        texts: list[str] = []
        errors: list[tuple[int, list[FieldError]]] = []
        kept: list[int] = []
        for position, clean, text, row_errors in rows:
            kept.append(position)
            if row_errors:
                errors.append((position, row_errors))
            else:
                clean_rows.append(clean)
                texts.append(text)
        columns = {name: [clean[name] for clean in clean_rows] for name in FIELD_NAMES}
        return cls.of_texts(columns, texts, errors, kept)

    @classmethod
    def of_texts(
        cls,
        columns: dict[str, list[Any]],
        texts: list[str],
        errors: list[tuple[int, list[FieldError]]],
        kept: list[int],
    ) -> CheckedRows:
        """Checked rows whose JSON texts are known whole: each is one piece (all but its braces)."""
        checked = cls(columns, [[text[1:-1] for text in texts]], errors, kept)
        checked.texts = texts
        return checked


#: Whole numbers of at most this many digits are read as plain digits; longer ones go the general
#: way, which reads any length (as a float: out of every field's range), where int() refuses
#: more than 4,300 digits.
PLAIN_DIGITS = 18


def _plain_column(field: Field, texts: Sequence[str]) -> tuple[list[Any], list[str]] | None:
    """A whole column's clean values and JSON fragments when every cell takes the common way
    through ``BatchChecker._check_text`` (plain digits in range for a whole number; text neither
    blank nor too long), with the same outcomes; None when any cell does not."""
    if field.choices:
        return None
    prefix = f'"{field.name}":'
    if field.kind is int:
        if max(map(len, texts)) > PLAIN_DIGITS or not (all(map(str.isdigit, texts)) and all(map(str.isascii, texts))):
            return None
        numbers = list(map(int, texts))
        if (field.minimum is not None and min(numbers) < field.minimum) or (
            field.maximum is not None and max(numbers) > field.maximum
        ):
            return None
        return numbers, list(map(prefix.__add__, map(str, numbers)))
    if field.kind is str:
        stripped = list(map(str.strip, texts))
        if not all(stripped) or (field.max_length is not None and max(map(len, stripped)) > field.max_length):
            return None
        if not all(map(str.isprintable, stripped)):  # maybe a control character: checked cell by cell
            return None
        return stripped, list(map(prefix.__add__, map(encode_basestring_ascii, stripped)))
    return None


class BatchChecker:
    """:func:`validate_passenger` (and, for CSV cells, :func:`parse_text_row`) for many rows.

    A batch repeats most of its values (classes, ports, ages, fares), so each
    field remembers the outcome of every value it has checked, with the value's
    JSON text: most cells cost a dictionary lookup. The outcomes are those of
    :func:`check_value` and :func:`parse_text` themselves, and any row with a
    problem is checked again by the general functions, so the errors and the
    clean values are the same as theirs, by construction.

    Each check returns (clean passenger, its JSON text, errors); the JSON text
    is what ``json.dumps(clean, separators=(",", ":"))`` writes.
    """

    #: Remembered values per field before the memory starts again (a bound on memory). Small:
    #: fields whose values are all distinct (PassengerId, Name, Ticket) gain nothing from it,
    #: and 50,000 of theirs made a request's memory grow with its rows up to tens of MB.
    MEMORY = 4096

    def __init__(self) -> None:
        self._json_memo: dict[str, dict[tuple[type, Any], tuple[Any, str | None, str]]] = {f.name: {} for f in FIELDS}
        self._text_memo: dict[str, dict[str, tuple[Any, str | None, str]]] = {f.name: {} for f in FIELDS}
        self._defaults = _DEFAULT_OUTCOMES

    def _remember(self, memo: dict[Any, Any], key: Any, outcome: tuple[Any, str | None, str]) -> None:
        if len(memo) >= self.MEMORY:
            memo.clear()
        memo[key] = outcome

    @staticmethod
    def _outcome(field: Field, value: Any, message: str | None) -> tuple[Any, str | None, str]:
        return value, message, "" if message else _json_fragment(field.name, value)

    def check_object(self, raw: Any, *, index: int) -> tuple[dict[str, Any], str, list[FieldError]]:
        """Check one parsed JSON passenger."""
        if raw.__class__ is not dict:
            return self._general(raw, index=index)
        clean: dict[str, Any] = {}
        parts: list[str] = []
        known = 0
        for field in FIELDS:
            name = field.name
            if name not in raw:
                if field.required:
                    return self._general(raw, index=index)
                default = self._defaults[name]
                clean[name] = default[0]
                parts.append(default[2])
                continue
            known += 1
            value = raw[name]
            memo = self._json_memo[name]
            key = (value.__class__, value)
            try:
                outcome = memo[key]
            except KeyError:
                checked, message = check_value(field, value)
                outcome = self._outcome(field, checked, message)
                # NaN never finds itself again; -0.0 would find 0.0 (equal, written differently).
                if value == value and not (value.__class__ is float and value == 0.0):
                    self._remember(memo, key, outcome)
            except TypeError:  # unhashable (an array, an object): the general check names it
                return self._general(raw, index=index)
            if outcome[1] is not None:
                return self._general(raw, index=index)
            clean[name] = outcome[0]
            parts.append(outcome[2])
        if known != len(raw):  # a field the schema does not know
            return self._general(raw, index=index)
        return clean, "{" + ",".join(parts) + "}", []

    def csv_plan(self, header: Sequence[str]) -> list[tuple[Field, int]] | None:
        """For each field in :data:`FIELDS` order, its column in the header (-1: absent), or
        None if rows need the general path (a repeated or unknown column)."""
        if len(set(header)) != len(header):
            return None
        if any(name not in FIELDS_BY_NAME and name not in IGNORED_CSV_COLUMNS for name in header):
            return None
        return [(field, header.index(field.name) if field.name in header else -1) for field in FIELDS]

    def check_cells(
        self, header: Sequence[str], plan: list[tuple[Field, int]] | None, cells: Sequence[str], *, index: int
    ) -> tuple[dict[str, Any], str, list[FieldError]]:
        """Check one CSV row of text cells (``plan`` from :meth:`csv_plan`)."""
        if plan is None or len(cells) != len(header):
            return self._general_text(header, cells, index=index)
        values: list[Any] = []
        parts: list[str] = []
        text_memo = self._text_memo
        outcome: tuple[Any, str | None, str] | None
        for field, column in plan:
            if column < 0:
                if field.required:
                    return self._general_text(header, cells, index=index)
                outcome = self._defaults[field.name]
            else:
                text = cells[column]
                memo = text_memo[field.name]
                outcome = memo.get(text)
                if outcome is None:
                    outcome = self._check_text(field, text)
                    self._remember(memo, text, outcome)
                if outcome[1] is not None:
                    return self._general_text(header, cells, index=index)
            values.append(outcome[0])
            parts.append(outcome[2])
        return dict(zip(FIELD_NAMES, values, strict=True)), "{" + ",".join(parts) + "}", []

    def check_text_rows(
        self,
        header: Sequence[str],
        plan: list[tuple[Field, int]] | None,
        rows: Sequence[Sequence[str]],
        *,
        first_index: int,
    ) -> CheckedRows:
        """:meth:`check_cells` for many rows, a column at a time (the batch path's CSV reader).

        Rows whose cells are all blank are dropped (they are not passengers and
        take no index); the rest are numbered from ``first_index``.
        """
        width = len(header)
        if plan is None or set(map(len, rows)) - {width}:
            return self._rows_one_by_one(header, plan, rows, first_index=first_index)
        count = len(rows)
        cells_by_column = list(zip(*rows, strict=True)) if rows else [() for _ in header]
        columns: dict[str, list[Any]] = {}
        parts: list[Sequence[str]] = []
        failing: set[int] = set()
        for field, column in plan:
            if column < 0:
                if field.required:
                    return self._rows_one_by_one(header, plan, rows, first_index=first_index)
                default = self._defaults[field.name]
                columns[field.name] = [default[0]] * count
                parts.append([default[2]] * count)
                continue
            texts = cells_by_column[column]
            memo = self._text_memo[field.name]
            found = list(map(memo.get, texts))
            if found.count(None) * 4 >= count > 0:  # mostly values never seen (ids, names): a column at once
                plain = _plain_column(field, texts)
                if plain is not None:
                    values, fragments = plain
                    if count <= self.MEMORY:  # remembered as one by one, so that repeats then hit
                        if len(memo) + count > self.MEMORY:
                            memo.clear()
                        remembered = zip(values, itertools.repeat(None, count), fragments, strict=True)
                        memo.update(zip(texts, remembered, strict=True))
                    columns[field.name] = values
                    parts.append(fragments)
                    continue
            if None in found:
                for i, outcome in enumerate(found):
                    if outcome is None:
                        found[i] = outcome = self._check_text(field, texts[i])
                        self._remember(memo, texts[i], outcome)
            # Every None was checked just above: (values, messages, fragments) in one pass.
            checked_values, messages, checked_fragments = zip(*found, strict=True) if found else ((), (), ())
            if any(messages):
                failing.update(i for i, message in enumerate(messages) if message is not None)
            columns[field.name] = list(checked_values)
            parts.append(checked_fragments)
        if failing:  # rare: the rows with a problem, one by one, for their exact errors
            return self._rows_one_by_one(header, plan, rows, first_index=first_index)
        return CheckedRows(columns, parts, [], list(range(count)))

    def _rows_one_by_one(
        self,
        header: Sequence[str],
        plan: list[tuple[Field, int]] | None,
        rows: Sequence[Sequence[str]],
        *,
        first_index: int,
    ) -> CheckedRows:
        def passengers() -> Iterator[tuple[int, dict[str, Any], str, list[FieldError]]]:
            index = first_index
            for position, cells in enumerate(rows):
                clean, text, row_errors = self.check_cells(header, plan, cells, index=index)
                if row_errors and not any(c.strip() for c in cells):
                    continue  # a line of empty cells
                index += 1
                yield position, clean, text, row_errors

        return CheckedRows.collect(passengers())

    def _check_text(self, field: Field, text: str) -> tuple[Any, str | None, str]:
        # Two common cases first, with the general functions' results (a batch's unique
        # values, ids and names, miss the memory): plain digits for a whole number...
        if field.kind is int and not field.choices and len(text) <= PLAIN_DIGITS and text.isascii() and text.isdigit():
            number = int(text)
            if (field.minimum is None or number >= field.minimum) and (
                field.maximum is None or number <= field.maximum
            ):
                return number, None, f'"{field.name}":{number}'
        # ... and free text that is not blank and not too long.
        elif field.kind is str and not field.choices:
            stripped = text.strip()
            if stripped and (field.max_length is None or len(stripped) <= field.max_length) and stripped.isprintable():
                return stripped, None, f'"{field.name}":{_encode_text(stripped)}'
        value = parse_text(field, text)
        if value is None and not field.nullable and not field.required:
            return self._defaults[field.name]  # an empty optional cell: omitted, the default applies
        checked, message = check_value(field, value)
        return self._outcome(field, checked, message)

    @staticmethod
    def _general(raw: Any, *, index: int) -> tuple[dict[str, Any], str, list[FieldError]]:
        clean, errors = validate_passenger(raw, index=index)
        return clean, "" if errors else json.dumps(clean, separators=(",", ":")), errors

    def _general_text(
        self, header: Sequence[str], cells: Sequence[str], *, index: int
    ) -> tuple[dict[str, Any], str, list[FieldError]]:
        if len(cells) != len(header):
            return {}, "", [FieldError(index, None, f"has {len(cells)} cells, the header has {len(header)}")]
        return self._general(parse_text_row(dict(zip(header, cells, strict=True))), index=index)
