"""The streaming batch path: the memoised checker, the JSON streamer, ids, and process/run end to end."""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
import sys
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSENGER, TEST_CSV, TRAIN_CSV
from titanic_web import batch, csvio, features, requestlog, schema, spool
from titanic_web import recorder as recorder_module
from titanic_web.batch import Answers, BatchInputError, BodyError, Progress
from titanic_web.predictor import Predictor
from titanic_web.recorder import FIELDS as RECORD_FIELDS
from titanic_web.recorder import Recorder, Staged, parse_fields, typed
from titanic_web.schema import FIELD_NAMES, BatchChecker, FieldError

COMPACT = (",", ":")


def checked(fields: Sequence[str]) -> tuple[Any, ...]:
    """A spooled record checked (parse_fields), with its numbers as numbers."""
    return typed(parse_fields(fields))


def dumps(value: Any) -> str:
    return json.dumps(value, separators=COMPACT)


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as fh:
        header, *rows = list(csv.reader(fh))
    return header, rows


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> Predictor:
    return Predictor.from_dir(model_dir)


# -- BatchChecker == the general path ------------------------------------------------------------


def general_cells(header: list[str], cells: list[str], index: int) -> tuple[dict[str, Any], list[FieldError]]:
    """What csvio (the general CSV path) makes of one row: parse_text_row + validate_passenger,
    or the cell-count error it reports for a row of the wrong width."""
    if len(cells) != len(header):
        with pytest.raises(schema.InputError) as caught:
            csvio.read_passengers(csv_text(header, [cells]), max_rows=1)
        (error,) = caught.value.errors
        return {}, [FieldError(index, error.field, error.message)]
    return schema.validate_passenger(schema.parse_text_row(dict(zip(header, cells, strict=True))), index=index)


def assert_cells_agree(checker: BatchChecker, header: list[str], rows: list[list[str]]) -> int:
    """check_cells gives the general path's clean dict (same key order), errors and JSON text.
    Returns how many rows were valid."""
    plan = checker.csv_plan(header)
    valid = 0
    for index, cells in enumerate(rows):
        clean, text, errors = checker.check_cells(header, plan, cells, index=index)
        want_clean, want_errors = general_cells(header, cells, index)
        context = (header, cells)
        assert errors == want_errors, context
        assert clean == want_clean and list(clean) == list(want_clean), context
        if want_errors:
            assert text == "", context
        else:
            assert list(clean) == list(FIELD_NAMES), context
            assert text == dumps(want_clean), context  # also the sign of a zero, the form of a float
            valid += 1
    return valid


@pytest.mark.parametrize("path", [TRAIN_CSV, TEST_CSV], ids=["train", "test"])
def test_check_cells_matches_the_general_path_on_the_competition_files(path: Path) -> None:
    header, rows = read_csv(path)
    checker = BatchChecker()

    assert assert_cells_agree(checker, header, rows) == len(rows)
    # The second pass answers from the memory alone.
    assert assert_cells_agree(checker, header, rows) == len(rows)


#: Cells a hostile or careless file may hold, tried in every column.
HOSTILE_CELLS = [
    "",
    " ",
    "  \t",
    " 3 ",
    "3",
    "3.0",
    "3.5",
    "03",
    "+3",
    "1e1",
    "1E0",
    "-1",
    "0",
    "-0",
    "-0.0",
    "0.0",
    "20",
    "21",
    "120",
    "120.5",
    "121",
    "10000",
    "10001",
    "2147483647",
    "2147483648",
    "1e400",
    "-1e400",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "abc",
    "3 3",
    "0x10",
    "1_000",
    "male",
    "female",
    " female ",
    "Male",
    "MALE",
    "C",
    "Q",
    "S",
    " S",
    "c",
    "X",
    "x" * 50,
    "x" * 51,
    "y" * 200,
    "y" * 201,
    'O\'Brien, Mrs. "Molly" (Mário Ünïcødé ✓)',
    "Kelly, Mr. James",
    "\u00e9",
    "\u200b",
    "Kelly\x00, Mr. James",
    "\x1b[31m",
    "a\tb",
    "x\x85y",
    "\x7f",
    "B57 B59 B63 B66",
]


@pytest.fixture(params=["memory", "tiny-memory"])
def checker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> BatchChecker:
    """A checker with its usual memory, or one that forgets every 3 values (so it starts again often)."""
    if request.param == "tiny-memory":
        monkeypatch.setattr(BatchChecker, "MEMORY", 3)
    return BatchChecker()


def test_check_cells_matches_the_general_path_on_hostile_cells(checker: BatchChecker) -> None:
    header, rows = read_csv(TEST_CSV)
    base = rows[0]
    variants = []
    for column in range(len(header)):
        for cell in HOSTILE_CELLS:
            cells = list(base)
            cells[column] = cell
            variants.append(cells)
    # Two bad cells in one row: every error is reported, in field order.
    variants.append([c if h not in ("Age", "Sex") else "bad" for h, c in zip(header, base, strict=True)])

    valid = assert_cells_agree(checker, header, variants)
    assert assert_cells_agree(checker, header, variants) == valid  # again, from the memory
    assert 0 < valid < len(variants)  # both outcomes were exercised


@pytest.mark.parametrize(
    "order",
    [
        [
            "Survived",
            "PassengerId",
            "Pclass",
            "Name",
            "Sex",
            "Age",
            "SibSp",
            "Parch",
            "Ticket",
            "Fare",
            "Cabin",
            "Embarked",
        ],
        ["Embarked", "Cabin", "Fare", "Ticket", "Parch", "SibSp", "Age", "Sex", "Name", "Pclass", "PassengerId"],
        ["Sex", "Pclass"],
        ["Pclass", "Sex", "Age", "Fare"],
        ["Pclass", "Sex", "Cabin", "Survived"],
        ["Pclass", "Sex", "Age", "Age"],  # a repeated column: the general path, last one wins
        ["Pclass", "Sex", "Lifeboat"],  # an unknown column: named as such
        ["Pclass", "Age"],  # no Sex column: every row says it is required
    ],
    ids=[
        "with-survived",
        "reversed",
        "required-only",
        "some-optional",
        "cabin-survived",
        "repeated",
        "unknown",
        "no-sex",
    ],
)
def test_check_cells_matches_the_general_path_for_other_headers(order: list[str]) -> None:
    header, rows = read_csv(TRAIN_CSV)
    columns = [header.index("Ticket" if name == "Lifeboat" else name) for name in order]
    reordered = [[cells[c] for c in columns] for cells in rows[:300]]
    hostile = [[cell] * len(order) for cell in HOSTILE_CELLS]
    checker = BatchChecker()

    assert_cells_agree(checker, order, reordered + hostile)
    assert_cells_agree(checker, order, reordered + hostile)


def test_check_cells_reports_a_row_of_the_wrong_width() -> None:
    header, rows = read_csv(TEST_CSV)
    checker = BatchChecker()
    short, long = rows[0][:-2], rows[0] + ["extra"]

    assert_cells_agree(checker, header, [rows[0], short, rows[1], long, ["x"]])
    _, _, errors = checker.check_cells(header, checker.csv_plan(header), short, index=7)
    assert [(e.index, e.field) for e in errors] == [(7, None)]
    assert "9 cells" in errors[0].message and "11" in errors[0].message


def expected_chunk(header: list[str], rows: list[list[str]], first_index: int) -> schema.CheckedRows:
    """What the general path makes of a block of CSV rows: blank rows dropped, the rest numbered."""
    clean_rows, texts, errors, kept = [], [], [], []
    index = first_index
    for position, cells in enumerate(rows):
        if not any(c.strip() for c in cells):
            continue
        clean, row_errors = general_cells(header, cells, index)
        kept.append(position)
        index += 1
        if row_errors:
            errors.append((position, row_errors))
        else:
            clean_rows.append(clean)
            texts.append(dumps(clean))
    columns = {name: [clean[name] for clean in clean_rows] for name in FIELD_NAMES}
    return schema.CheckedRows.of_texts(columns, texts, errors, kept)


def assert_chunks_agree(checker: BatchChecker, header: list[str], rows: list[list[str]], size: int) -> None:
    plan = checker.csv_plan(header)
    first = 0
    for start in range(0, len(rows), size):
        block = rows[start : start + size]
        got = checker.check_text_rows(header, plan, block, first_index=first)
        want = expected_chunk(header, block, first)
        assert got.errors == want.errors, (header, start)
        assert got.kept == want.kept, (header, start)
        assert got.texts == want.texts, (header, start)
        assert list(got.columns) == list(FIELD_NAMES)
        assert dumps(got.columns) == dumps(want.columns), (header, start)  # values and their types
        first += len(got.kept)


@pytest.mark.parametrize("size", [1, 7, 2000])
def test_check_text_rows_matches_the_general_path(checker: BatchChecker, size: int) -> None:
    train_header, train_rows = read_csv(TRAIN_CSV)
    header, rows = read_csv(TEST_CSV)
    blank = [""] * len(header)
    hostile = []
    for column in range(len(header)):
        for cell in HOSTILE_CELLS:
            cells = list(rows[len(hostile) % len(rows)])
            cells[column] = cell
            hostile.append(cells)
    mixed = rows[:40] + [blank, [], [" "] * len(header), rows[0][:3], [" ", ""]] + hostile + rows[40:]

    assert_chunks_agree(checker, train_header, train_rows, size)
    assert_chunks_agree(checker, header, rows, size)
    assert_chunks_agree(checker, header, mixed, size)
    reordered = header[::-1]
    assert_chunks_agree(checker, reordered, [cells[::-1] for cells in mixed], size)
    assert_chunks_agree(checker, ["Sex", "Pclass", "Age"], [[c[3], c[1], c[4]] for c in mixed if len(c) > 4], size)


#: Values a JSON body may hold, tried for every field.
HOSTILE_VALUES: list[Any] = [
    0,
    1,
    2,
    3,
    -1,
    20,
    21,
    120,
    121,
    10_000,
    10_001,
    2**31 - 1,
    2**31,
    10**30,
    10**400,  # beyond any float: float() overflows
    -(10**400),
    0.0,
    -0.0,
    0.0,
    1.0,
    3.0,
    3.5,
    34.5,
    -0.5,
    120.0,
    120.25,
    1e-300,
    1e300,
    math.inf,
    -math.inf,
    math.nan,
    True,
    False,
    None,
    "",
    " ",
    "3",
    "3.0",
    "male",
    "female",
    " male ",
    "Male",
    "C",
    "Q",
    "S",
    "X",
    "c",
    "x" * 50,
    "x" * 51,
    "y" * 200,
    "y" * 201,
    'Ünïcødé "quoted" \\ ✓\u2028',
    "Kelly, Mr. James",
    [],
    [1],
    {},
    {"a": 1},
]


def assert_objects_agree(checker: BatchChecker, raws: list[Any]) -> int:
    valid = 0
    for index, raw in enumerate(raws):
        clean, text, errors = checker.check_object(raw, index=index)
        want_clean, want_errors = schema.validate_passenger(raw, index=index)
        assert errors == want_errors, raw
        assert list(clean) == list(want_clean), raw
        assert dumps(clean) == dumps(want_clean), raw  # equal values written alike (0.0 vs -0.0; NaN)
        if want_errors:
            assert text == "", raw
        else:
            assert text == dumps(want_clean), raw
            valid += 1
    return valid


def test_check_object_matches_validate_passenger(checker: BatchChecker) -> None:
    raws: list[Any] = [dict(PASSENGER), {"Pclass": 1, "Sex": "female"}]
    for name in FIELD_NAMES:
        for value in HOSTILE_VALUES:
            raws.append({**PASSENGER, name: value})
        raws.append({k: v for k, v in PASSENGER.items() if k != name})  # omitted
    raws += [
        {**PASSENGER, "age": 30},  # an unknown key beside valid fields
        {**PASSENGER, "Lifeboat": "13", "Age": "old"},
        {"Sex": "male"},  # a required key missing
        {},
        {"Age": 3},
        dict(reversed(list(PASSENGER.items()))),  # keys in another order: clean is in FIELDS order
        [PASSENGER],
        "a passenger",
        42,
        3.5,
        None,
        True,
        [],  # not objects
    ]

    valid = assert_objects_agree(checker, raws)
    assert assert_objects_agree(checker, raws) == valid  # again, from the memory
    assert assert_objects_agree(checker, list(reversed(raws))) == valid  # other values remembered first
    assert 0 < valid < len(raws)


# -- features_json ----------------------------------------------------------------------------


def test_features_json_matches_json_dumps_of_the_record(predictor: Predictor) -> None:
    passengers = []
    for path in (TRAIN_CSV, TEST_CSV):
        passengers += csvio.read_passengers(csvio.decode(path.read_bytes()), max_rows=sys.maxsize)
    assert len(passengers) == 891 + 418
    _, compiled_rows = predictor.score(passengers)
    pipeline_rows = predictor.pipeline[0].transform(features.raw_frame(passengers)).itertuples(index=False)
    rows = list(compiled_rows) + [tuple(r) for r in pipeline_rows]
    assert any(math.isnan(v) for row in rows for v in row[: len(features.NUMERIC_FEATURES)])  # nulls too

    assert features.features_json(rows) == [dumps(features.to_record(row)) for row in rows]
    assert features.features_json(rows[:1]) == [dumps(features.to_record(rows[0]))]
    assert features.features_json(rows[::-1][:50]) == [dumps(features.to_record(row)) for row in rows[::-1][:50]]
    assert features.features_json([]) == []


# -- json_items ---------------------------------------------------------------------------------


class CountingStream(io.BytesIO):
    """A body that remembers how many bytes were read from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


@pytest.fixture(params=[1, 7, 64, batch.READ_BYTES], ids=lambda n: f"read{n}")
def read_bytes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run with tiny reads, so items, strings and numbers straddle them."""
    monkeypatch.setattr(batch, "READ_BYTES", request.param)
    return int(request.param)


def items_of(body: bytes) -> list[Any]:
    return list(batch.json_items(io.BytesIO(body)))


def some_passengers(count: int) -> list[dict[str, Any]]:
    text = csvio.decode(TEST_CSV.read_bytes())
    return csvio.read_passengers(text, max_rows=sys.maxsize)[:count]


ARRAYS: list[Any] = [
    [],
    [PASSENGER],
    some_passengers(25),
    [1.5, -3e-2, 10, 1e5, 2.5e-3, 0, -0.0, 123456789012345678901234567890, 7.25, 1.0e2],  # bare numbers
    ["x", 'a "quoted" ] , [ { string', "\\u00e9 é ✓ \U0001f6a2", "", True, False, None, [1, [2, []]], {}],
    [{"Name": "Kelly, Mr. James ]},[{", "Age": 34.5, "Fare": 7.8292}, {"nested": {"a": [1, {"b": "]"}]}}],
]


@pytest.mark.parametrize("value", ARRAYS, ids=["empty", "one", "passengers", "numbers", "scalars", "tricky"])
@pytest.mark.parametrize("layout", ["compact", "spaced", "indented", "padded"])
def test_json_items_streams_what_json_loads_gives(read_bytes: int, value: Any, layout: str) -> None:
    text = {
        "compact": json.dumps(value, separators=COMPACT, ensure_ascii=False),
        "spaced": json.dumps(value, ensure_ascii=False),
        "indented": json.dumps(value, indent=2),
        "padded": " \r\n\t" + json.dumps(value, indent="\t", ensure_ascii=False).replace(",", " ,  ") + "\n\n ",
    }[layout]

    assert items_of(text.encode()) == json.loads(text)


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(PASSENGER),
        json.dumps(PASSENGER, indent=3),
        '  \n{"Pclass": 3, "Sex": "male"}\r\n ',
        "{}",
        '{"Name": "Ünïcødé, Mr. ✓ \\"x\\" ]"}',
    ],
    ids=["passenger", "indented", "padded", "empty-object", "unicode"],
)
def test_json_items_gives_a_single_object_as_one_item(read_bytes: int, text: str) -> None:
    assert items_of(text.encode()) == [json.loads(text)]


def test_json_items_accepts_a_byte_order_mark(read_bytes: int) -> None:
    assert items_of(b"\xef\xbb\xbf" + json.dumps([PASSENGER]).encode()) == [PASSENGER]
    assert items_of(b"\xef\xbb\xbf" + json.dumps(PASSENGER).encode()) == [PASSENGER]


def test_json_items_reads_an_array_as_it_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch, "READ_BYTES", 64)
    body = json.dumps([PASSENGER] * 2000).encode()
    stream = CountingStream(body)
    items = batch.json_items(stream)

    assert next(items) == PASSENGER
    assert stream.bytes_read < 1000 < len(body)
    assert sum(1 for _ in items) == 1999
    assert stream.bytes_read == len(body)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b" \n\t ",
        b"[",
        b"[ ",
        b'[{"Pclass": 3',
        b'[{"Pclass": 3}',
        b'[{"Pclass": 3},',
        b'{"Pclass": 3',
        b'[{"Pclass": 3},]',
        b"[,]",
        b'[,{"Pclass": 3}]',
        b'[{"Pclass": 3} {"Pclass": 1}]',
        b"[1 2]",
        b'[{"Pclass": 3}] x',
        b'[{"Pclass": 3}]]',
        b"[] []",
        b"[]x",
        b'{"Pclass": 3} x',
        b'{"a": 1}{"b": 2}',
        b"{'Pclass': 3}",
        b"]",
        b"[1.5.2]",
        b"[1e]",
        b"[-]",
        b'["open]',
        b"[tru]",
        b"42",
        b"3.5",
        b'"a passenger"',
        b"null",
        b"true",
        b'[{"Name": "\xff"}]',
        b'{"Name": "\xe4"}',
        b"\xff\xfe[\x00]\x00",
        b'[{"Name": "\xe2\x82"}]',
    ],
)
def test_json_items_refuses_malformed_bodies(read_bytes: int, body: bytes) -> None:
    with pytest.raises(BodyError) as caught:
        items_of(body)

    assert str(caught.value)
    assert caught.value.too_large is False


def test_json_items_says_what_is_wrong() -> None:
    with pytest.raises(BodyError, match="empty"):
        items_of(b"  ")
    with pytest.raises(BodyError, match="UTF-8"):
        items_of(b'[{"Name": "\xff"}]')
    with pytest.raises(BodyError, match="object.*array"):
        items_of(b"42")
    with pytest.raises(BodyError, match=r"malformed JSON.*\(char \d+\)"):
        items_of(b'[{"Pclass": 3},]')


#: A field holding arrays nested deeper than the json module's recursion reaches.
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    "body",
    [b'{"Pclass": 3, "a": ' + DEEP + b"}", b'[{"Pclass": 3}, {"a": ' + DEEP + b"}]", DEEP],
    ids=["object", "array-item", "array"],
)
def test_json_items_refuses_values_nested_too_deeply(body: bytes) -> None:
    with pytest.raises(BodyError, match="^malformed JSON: arrays or objects nested too deeply$") as caught:
        items_of(body)

    assert caught.value.too_large is False


# -- process / run ----------------------------------------------------------------------------


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    """A real recorder on a temporary spool, without its writer thread (nothing is delivered)."""
    recorder = Recorder(tmp_path / "spool")
    monkeypatch.setattr(recorder, "start", lambda: None)
    yield recorder
    recorder.spool.close()


def spooled_lines(directory: Path) -> list[bytes]:
    """Every line in a spool folder, in order."""
    return [
        line
        for path in sorted(directory.glob(f"*{spool.SUFFIX}"))
        for line in spool.whole_lines(path.read_bytes()).splitlines(True)
    ]


def spooled(directory: Path) -> list[list[str]]:
    """Every record in a spool folder, as text fields."""
    return [record for line in spooled_lines(directory) for record in spool.decode(line)[1]]


def run(
    body: bytes | str,
    *,
    kind: str,
    predictor: Predictor,
    recorder: Recorder | None,
    answer: str = "json",
    **options: Any,
) -> tuple[batch.Summary, bytes, list[Progress]]:
    """batch.run over a body; (summary, the answer body, the progress seen)."""
    answers = Answers(answer, predictor.version)
    steps: list[Progress] = []
    data = body.encode() if isinstance(body, str) else body
    options = {"source": "api", "max_rows": 100_000, **options}
    try:
        summary = batch.run(
            io.BytesIO(data),
            kind=kind,
            predictor=predictor,
            recorder=recorder,
            answers=answers,
            progress=steps.append,
            **options,
        )
        file, size = answers.finish()
        with file:
            out = file.read()
        assert len(out) == size
    finally:
        answers.close()
    return summary, out, steps


@pytest.fixture(scope="module")
def test_csv() -> str:
    return TEST_CSV.read_text()


@pytest.fixture(scope="module")
def test_passengers(test_csv: str) -> list[dict[str, Any]]:
    return csvio.read_passengers(test_csv, max_rows=sys.maxsize)


@pytest.mark.parametrize("chunk_rows", [3, 200])  # spooled by row (< COLUMN_LINE_ROWS), then by column
def test_run_csv_in_chunks_answers_as_predict_and_stages_every_record(
    predictor: Predictor,
    recorder: Recorder,
    tmp_path: Path,
    test_csv: str,
    test_passengers: list[dict[str, Any]],
    chunk_rows: int,
) -> None:
    summary, out, steps = run(test_csv, kind="csv", predictor=predictor, recorder=recorder, chunk_rows=chunk_rows)

    want = predictor.predict(test_passengers)
    body = json.loads(out)
    answers = body["predictions"]
    assert body["model_version"] == predictor.version
    assert [a["PassengerId"] for a in answers] == [p["PassengerId"] for p in test_passengers]
    assert [a["survived"] for a in answers] == [p.survived for p in want]
    assert [a["probability"] for a in answers] == [round(p.probability, 4) for p in want]
    ids = [a["id"] for a in answers]
    assert len(set(ids)) == 418 and all(str(uuid.UUID(i)) == i for i in ids)
    reads = [*range(chunk_rows, 418, chunk_rows), 418]
    assert steps == [Progress(rows=n) for n in reads]  # one per chunk read
    assert (summary.rows, summary.chunks, summary.survived) == (418, len(reads), sum(p.survived for p in want))
    kept_by_column = [spool.BY_COLUMN.encode() in line for line in spooled_lines(tmp_path / "spool")]
    assert kept_by_column == [chunk_rows >= batch.COLUMN_LINE_ROWS] * len(reads)

    records = spooled(tmp_path / "spool")
    assert spool.scan(tmp_path / "spool")["rows"] == 418
    assert [r[0] for r in records] == [uuid.UUID(i).hex for i in ids]
    for fields, passenger, prediction in zip(records, test_passengers, want, strict=True):
        parsed = checked(fields)
        record = dict(zip(RECORD_FIELDS, parsed, strict=True))
        assert (record["passenger_id"], record["survived"]) == (passenger["PassengerId"], prediction.survived)
        assert record["probability"] == prediction.probability
        assert (record["model_version"], record["source"]) == (predictor.version, "api")
        assert record["features"] == dumps(prediction.features)
        assert record["raw_input"] == dumps(passenger)


def test_run_json_array_in_chunks_matches_predict(
    predictor: Predictor, recorder: Recorder, tmp_path: Path, test_passengers: list[dict[str, Any]]
) -> None:
    passengers = test_passengers[:100]
    summary, out, steps = run(
        json.dumps(passengers), kind="json", predictor=predictor, recorder=recorder, answer="csv", chunk_rows=7
    )

    want = predictor.predict(passengers)
    assert out.decode().splitlines() == ["PassengerId,Survived"] + [
        f"{p['PassengerId']},{w.survived}" for p, w in zip(passengers, want, strict=True)
    ]
    assert [s.rows for s in steps] == [*range(7, 100, 7), 100] and summary.chunks == 15
    assert [json.loads(r[8]) for r in spooled(tmp_path / "spool")] == passengers


def test_spool_columns_keeps_what_spool_rows_keeps_and_falls_back_to_rows(
    predictor: Predictor, test_csv: str, test_passengers: list[dict[str, Any]]
) -> None:
    header, *rows = list(csv.reader(io.StringIO(test_csv)))
    checker = BatchChecker()
    checked = checker.check_text_rows(header, checker.csv_plan(header), rows[:50], first_index=0)
    assert checked.texts == [dumps(p) for p in test_passengers[:50]]
    probabilities, engineered = predictor.score_columns(checked.columns)
    ids = [uuid.uuid4().hex for _ in engineered]
    pids: list[int | None] = list(checked.columns["PassengerId"])
    pids[3] = None
    survived = [int(p >= predictor.threshold) for p in probabilities.tolist()]
    common: dict[str, Any] = {
        "model_version": predictor.version,
        "source": "batch",
        "created_at": datetime(2026, 12, 6, 10, 30, 1, 5, tzinfo=UTC),
        "request_id": "req-1",
        "latency_ms": recorder_module.PENDING_LATENCY,
    }
    by_row = spool.encode(
        recorder_module.spool_rows(
            ids,
            pids,
            survived,
            probabilities.tolist(),
            features_json=features.features_json(engineered),
            raw_json=checked.texts,
            **common,
        ),
        spooled_at=3.5,
    )
    by_column = recorder_module.spool_columns(
        ids, pids, survived, probabilities, features=engineered, raw_parts=checked.parts, spooled_at=3.5, **common
    )
    assert spool.BY_COLUMN.encode() in by_column and spool.BY_COLUMN.encode() not in by_row
    assert len(by_column) < len(by_row)  # the shared fields once, the numbers as bytes
    assert spool.decode(by_column) == spool.decode(by_row)
    # A piece a line by column cannot hold (JSON text never has it): the chunk is kept by row.
    odd = [list(column) for column in checked.parts]
    odd[2][7] += "\x1f"
    fallback = recorder_module.spool_columns(
        ids, pids, survived, probabilities, features=engineered, raw_parts=odd, spooled_at=3.5, **common
    )
    assert spool.BY_COLUMN.encode() not in fallback
    assert spool.decode(fallback)[1][7][8] == "{" + ",".join(column[7] for column in odd) + "}"
    # So is a feature text that is not a string (no feature has one today): stored as null.
    no_deck = [(*row[:-2], None, row[-1]) for row in engineered]
    kept = recorder_module.spool_columns(
        ids, pids, survived, probabilities, features=no_deck, raw_parts=checked.parts, spooled_at=3.5, **common
    )
    assert spool.BY_COLUMN.encode() not in kept
    assert all('"Deck":null' in fields[7] for fields in spool.decode(kept)[1])


def csv_line_of_each_row(text: str) -> list[tuple[int, list[str]]]:
    """(the line the csv module says each non-empty row ends on, its cells): what csv_rows must give."""
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader)
    return [(reader.line_num, cells) for cells in reader if cells]


@pytest.mark.parametrize("block_rows", [1, 4, 2000])
@pytest.mark.parametrize("seed", range(4))
def test_csv_rows_number_lines_as_the_csv_module_does(seed: int, block_rows: int) -> None:
    """Blocks are read whole; rows whose quoted cells span lines, and empty lines, must not
    shift the line numbers that errors name."""
    generator = random.Random(seed)
    out = ["PassengerId,Pclass,Name,Sex\r\n"]
    ends = ["\r\n", "\n", "\r"]
    for n in range(200):
        shape = generator.random()
        if shape < 0.1:
            out.append(generator.choice(ends[:2]))  # an empty line
        elif shape < 0.25:  # a name over several lines, each line break written one of the ways
            inside = generator.choice([*ends, "\n\n", "\r\r\n"])
            out.append(f'{n},3,"Kelly,{inside} Mr. J",male' + "\r\n")
        else:
            out.append(f'{n},3,"Kelly, Mr. J",male' + generator.choice(ends))
    text = "".join(out)

    header, blocks = batch.csv_rows(io.BytesIO(text.encode()), block_rows=block_rows)

    assert header == ["PassengerId", "Pclass", "Name", "Sex"]
    numbered = [(line, cells) for lines, block in blocks for line, cells in zip(lines, block, strict=True)]
    assert numbered == csv_line_of_each_row(text)
    assert any(line != position + 2 for position, (line, _) in enumerate(numbered))  # the case is there


def csv_with_a_bad_byte(seed: int, bad_line: int, *, bom: bool = False) -> bytes:
    """A CSV body of 3000 rows, lines ended every way, with a Latin-1 é on line ``bad_line``."""
    generator = random.Random(seed)
    lines = ["PassengerId,Pclass,Name,Sex"] + [
        f"{n},3,Kelly Mr. J{'x' * generator.randrange(30)},male" for n in range(3000)
    ]
    body = b"\xef\xbb\xbf" if bom else b""
    for number, line in enumerate(lines, start=1):
        data = line.encode()
        if number == bad_line:
            data = data.replace(b"Kelly", b"K\xe9lly").replace(b"Name", b"N\xe4me")
        body += data + generator.choice([b"\r\n", b"\n", b"\r"])
    return body


def where_it_is_not_utf8(body: bytes) -> tuple[int, int]:
    """(the line the csv module reads the first byte that is not UTF-8 on, that byte's offset)."""
    with pytest.raises(UnicodeDecodeError) as caught:
        body.decode()
    reader = csv.reader(io.StringIO(body.decode(errors="surrogateescape"), newline=""))
    line = next(reader.line_num for cells in reader if any("\udc80" <= c <= "\udcff" for c in "".join(cells)))
    return line, caught.value.start


class Unseekable(io.BytesIO):
    def seekable(self) -> bool:
        return False


@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("bad_line", [1, 2, 250, 2999, 3001])
def test_csv_rows_name_the_line_and_offset_of_a_byte_not_utf8(bad_line: int, bom: bool) -> None:
    """The text decoder reads 8 KB ahead of the csv reader: the line the reader is on is not the byte's."""
    body = csv_with_a_bad_byte(bad_line, bad_line, bom=bom)
    line, offset = where_it_is_not_utf8(body)
    assert line == bad_line

    with pytest.raises(BodyError) as caught:
        header, blocks = batch.csv_rows(io.BytesIO(body), block_rows=500)
        for _ in blocks:
            pass
    assert str(caught.value) == f"the CSV file must be UTF-8 text (line {line}: the byte at offset {offset} is not)"

    with pytest.raises(BodyError) as unseekable:  # not read again: only a line it is on or after
        header, blocks = batch.csv_rows(Unseekable(body), block_rows=500)
        for _ in blocks:
            pass
    said = re.fullmatch(
        r"the CSV file must be UTF-8 text \(a byte on line (\d+) or after is not\)", str(unseekable.value)
    )
    assert said is not None and 1 <= int(said[1]) <= line


@pytest.mark.parametrize(
    ("body", "line", "offset"),
    [
        # A chunk (8192 bytes) ends just after a \r: the line break is the decoder's until the next one.
        (b"Pclass,Sex,Name\r" + b"3,male,x\r" * 906 + b"3,male," + b"y" * 14 + b"\r3,male,\xe9\r", 909, 8199),
        (b"Pclass,Sex,Name\n3,male,x\r\n3,male,\xe2\x82", 3, 33),  # cut short at the end
        (b"Pclass,Sex,\xffName\n3,male,x\n", 1, 11),  # in the header
    ],
    ids=["chunk-after-cr", "at-the-end", "header"],
)
def test_csv_rows_name_the_line_of_a_byte_not_utf8_wherever_it_is(body: bytes, line: int, offset: int) -> None:
    assert where_it_is_not_utf8(body) == (line, offset)
    with pytest.raises(BodyError) as caught:
        header, blocks = batch.csv_rows(io.BytesIO(body), block_rows=500)
        for _ in blocks:
            pass
    assert str(caught.value) == f"the CSV file must be UTF-8 text (line {line}: the byte at offset {offset} is not)"


#: Lines 1 to 8: a header, a row over two lines, an empty line, a row, then a quote never closed.
UNCLOSED = (
    'PassengerId,Pclass,Name,Sex\n1,3,"Kelly,\r\nMr. J",male\n\n2,3,x,male\n'
    '3,3,"Open, Mr. Q,male\n4,3,y,male\n5,3,z,male\n'
)


@pytest.mark.parametrize("block_rows", [1, 2, 4, 2000])
@pytest.mark.parametrize(
    ("text", "message"),
    [
        (UNCLOSED, "line 6: a quoted cell is not closed (the file ends inside it, on line 8)"),
        (UNCLOSED.rstrip("\n"), "line 6: a quoted cell is not closed (the file ends inside it, on line 8)"),
        ('Pclass,Sex,Name\n3,male,"Open\n', "line 2: a quoted cell is not closed (the file ends inside it, on line 2)"),
        ('Pclass,Sex,"Name\n3,male,x\n', "line 1: a quoted cell is not closed (the file ends inside it, on line 2)"),
        ('Pclass,Sex,Name\n3,male,x\n3,male,"Kelly" Mr. J\n', "line 3: ',' expected after '\"'"),
        (
            'Pclass,Sex,Name\n3,male,x\n\n3,male,"Open\n3,male,"Kelly"\n',
            "line 5: ',' expected after '\"' (in the row that begins on line 4)",  # the next quote closes it
        ),
    ],
    ids=["late-row", "no-last-line-break", "first-row", "header", "text-after-a-quote", "closed-later"],
)
def test_csv_rows_refuse_a_quote_left_open_naming_its_line(block_rows: int, text: str, message: str) -> None:
    """The csv module without strict=True reads an open quote to the end of the file as one cell."""
    with pytest.raises(BodyError) as caught:
        header, blocks = batch.csv_rows(io.BytesIO(text.encode()), block_rows=block_rows)
        for _ in blocks:
            pass
    assert str(caught.value) == message
    assert caught.value.too_large is False

    with pytest.raises(csvio.CsvError) as also:  # the CLI's reader
        csvio.read_passengers(text, max_rows=100)
    assert str(also.value) == message


def late_bad_csv(test_csv: str, *, bad_line: int, blank_after: int) -> str:
    """test.csv with a blank line after line blank_after and an Age of -3 on line bad_line (blank included)."""
    lines = test_csv.splitlines()
    lines.insert(blank_after, "")
    cells = next(csv.reader([lines[bad_line - 1]]))
    cells[lines[0].split(",").index("Age")] = "-3"
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(cells)
    lines[bad_line - 1] = out.getvalue()
    return "\n".join(lines) + "\n"


def test_run_invalid_row_in_a_late_chunk_names_its_line_and_stores_nothing(
    predictor: Predictor, recorder: Recorder, tmp_path: Path, test_csv: str
) -> None:
    body = late_bad_csv(test_csv, bad_line=301, blank_after=10)

    with pytest.raises(BatchInputError) as caught:
        run(body, kind="csv", predictor=predictor, recorder=recorder, chunk_rows=3)

    # Line 301 of the file: the header, 298 passengers and one blank line before it.
    assert [(e.index, e.field, e.line) for e in caught.value.errors] == [(298, "Age", 301)]
    assert "from 0 to 120" in caught.value.errors[0].message
    assert caught.value.total == 1
    assert spool.scan(tmp_path / "spool")["rows"] == 0
    assert spooled(tmp_path / "spool") == []


def test_run_invalid_json_item_names_its_index(
    predictor: Predictor, recorder: Recorder, tmp_path: Path, test_passengers: list[dict[str, Any]]
) -> None:
    passengers: list[Any] = list(test_passengers[:50])
    passengers[40] = {**passengers[40], "Pclass": 4}
    passengers[45] = "not a passenger"

    with pytest.raises(BatchInputError) as caught:
        run(json.dumps(passengers), kind="json", predictor=predictor, recorder=recorder, chunk_rows=4)

    assert [(e.index, e.field, e.line) for e in caught.value.errors] == [(40, "Pclass", None), (45, None, None)]
    assert spool.scan(tmp_path / "spool")["rows"] == 0


def test_run_caps_the_errors_listed_but_counts_them_all(
    predictor: Predictor, recorder: Recorder, tmp_path: Path, test_csv: str
) -> None:
    header, *rows = list(csv.reader(io.StringIO(test_csv)))
    for cells in rows[100:130]:
        cells[header.index("Sex")] = "unknown"
        cells[header.index("Pclass")] = "0"

    request = requestlog.begin(None)
    try:
        with pytest.raises(BatchInputError) as caught:
            run(csv_text(header, rows), kind="csv", predictor=predictor, recorder=recorder, chunk_rows=10, max_errors=7)
    finally:
        requestlog.end()

    assert caught.value.total == 60
    assert sorted(request.invalid or ()) == [("Pclass", "api", 30), ("Sex", "api", 30)]  # for the metrics: all
    assert [(e.line, e.field) for e in caught.value.errors] == [
        (102, "Pclass"),
        (102, "Sex"),
        (103, "Pclass"),
        (103, "Sex"),
        (104, "Pclass"),
        (104, "Sex"),
        (105, "Pclass"),
    ]
    assert spool.scan(tmp_path / "spool")["rows"] == 0


def test_run_refuses_more_than_max_rows(
    predictor: Predictor, recorder: Recorder, tmp_path: Path, test_csv: str
) -> None:
    with pytest.raises(BodyError) as caught:
        run(test_csv, kind="csv", predictor=predictor, recorder=recorder, chunk_rows=50, max_rows=417)

    assert caught.value.too_large is True
    assert "417" in str(caught.value)
    assert spool.scan(tmp_path / "spool")["rows"] == 0

    summary, _, _ = run(test_csv, kind="csv", predictor=predictor, recorder=recorder, chunk_rows=50, max_rows=418)
    assert summary.rows == 418 == spool.scan(tmp_path / "spool")["rows"]


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("json", b"[]"),
        ("json", b'[{"Pclass": 3, "Sex": "male"},'),
        ("csv", b""),
        ("csv", b"Pclass,Sex\n\n\n"),
        ("csv", b"Pclass,Sex\n3,m\xe4le\n"),
    ],
    ids=["empty-array", "truncated", "empty-csv", "header-only", "not-utf8"],
)
def test_run_unreadable_bodies_are_body_errors(
    predictor: Predictor, recorder: Recorder, tmp_path: Path, kind: str, body: bytes
) -> None:
    with pytest.raises(BodyError) as caught:
        run(body, kind=kind, predictor=predictor, recorder=recorder)

    assert str(caught.value) and caught.value.too_large is False
    assert spool.scan(tmp_path / "spool")["rows"] == 0


def test_run_without_a_recorder_stores_nothing(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch, test_csv: str, test_passengers: list[dict[str, Any]]
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        pytest.fail("a record was staged with recording off")

    monkeypatch.setattr(Staged, "__init__", refuse)
    monkeypatch.setattr(Recorder, "_append", refuse)

    summary, out, _ = run(test_csv, kind="csv", predictor=predictor, recorder=None, answer="csv", chunk_rows=100)

    assert summary.rows == 418
    assert out.decode().splitlines()[1:] == [
        f"{p['PassengerId']},{w.survived}"
        for p, w in zip(test_passengers, predictor.predict(test_passengers), strict=True)
    ]
