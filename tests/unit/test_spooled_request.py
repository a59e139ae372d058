"""A spooled record's request id and latency: written, read back, checked, and absent from older lines."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from titanic_web import spool
from titanic_web.recorder import FIELDS, PENDING_LATENCY, Record, Recorder, parse_fields, spool_rows, typed, utc_text

AT = datetime(2026, 11, 27, 12, 30, tzinfo=UTC)


def checked(fields: Sequence[str]) -> tuple[Any, ...]:
    """A spooled record checked (parse_fields), with its numbers as numbers."""
    return typed(parse_fields(fields))


def record(**fields: object) -> Record:
    values: dict[str, object] = dict(
        id=uuid.uuid4(),
        passenger_id=892,
        survived=0,
        probability=0.25,
        model_version="v1",
        source="api",
        features={"Pclass": 3.0},
        raw_input={"Pclass": 3, "Sex": "male"},
        created_at=AT,
    )
    values.update(fields)
    return Record(**values)  # type: ignore[arg-type]


def test_request_id_and_latency_are_the_last_two_fields_and_read_back() -> None:
    fields = record(request_id="abc-123", latency_ms=12.3456).to_fields()
    assert len(fields) == len(FIELDS) and FIELDS[-2:] == ("request_id", "latency_ms")
    assert fields[-2:] == ["abc-123", "12.346"]
    assert checked(fields)[-2:] == ("abc-123", 12.346)


def test_unknown_request_id_and_latency_are_empty_and_read_as_none() -> None:
    fields = record().to_fields()
    assert fields[-2:] == ["", ""]
    assert checked(fields)[-2:] == (None, None)


def test_a_record_spooled_before_request_ids_still_reads() -> None:
    """Lines written by the previous format end at raw_input: nine fields a row."""
    now = record(request_id="abc", latency_ms=1.0)
    old = now.to_fields()[:9]
    parsed = checked(old)
    assert parsed[:9] == checked(now.to_fields())[:9]
    assert parsed[9:] == (None, None)
    # A whole old line (two rows of nine fields) splits back into its rows.
    line = spool.encode([old, record().to_fields()[:9]], spooled_at=time.time())
    assert [len(checked(fields)) for fields in spool.decode(line)[1]] == [len(FIELDS)] * 2


@pytest.mark.parametrize(
    ("index", "value", "problem"),
    [
        (-2, "x" * 65, "bad request id"),
        (-2, "bell\x07", "bad request id"),
        (-1, "-1.0", "bad latency"),
        (-1, "nan", "bad latency"),
        (-1, "inf", "bad latency"),
        (-1, "slow", "bad latency"),
        (-1, PENDING_LATENCY, "bad latency"),  # a latency never filled in
    ],
)
def test_a_damaged_request_field_is_refused(index: int, value: str, problem: str) -> None:
    fields = record(request_id="abc", latency_ms=1.0).to_fields()
    fields[index] = value
    with pytest.raises(ValueError, match=problem):
        checked(fields)


def test_ten_fields_are_neither_format() -> None:
    with pytest.raises(ValueError, match="11 fields .9 fields if spooled before request ids., this one 10"):
        checked(record().to_fields()[:10])


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    """A recorder on a temporary spool, without its writer thread."""
    made = Recorder(tmp_path / "spool")
    monkeypatch.setattr(made, "start", lambda: None)
    yield made
    made.spool.close()


def chunk(count: int, request_id: str | None) -> list[tuple[str, ...]]:
    return spool_rows(
        [uuid.uuid4().hex for _ in range(count)],
        [None] * count,
        [1] * count,
        [0.75] * count,
        model_version="v1",
        source="batch",
        created_at=AT,
        features_json=["{}"] * count,
        raw_json=['{"Pclass":1}'] * count,
        request_id=request_id,
        latency_ms=PENDING_LATENCY,
    )


def spooled(directory: Path) -> list[list[str]]:
    rows: list[list[str]] = []
    for path in sorted(directory.glob(f"*{spool.SUFFIX}")):
        for line in spool.whole_lines(path.read_bytes()).splitlines(keepends=True):
            rows += spool.decode(line)[1]
    return rows


def test_every_row_of_a_staged_request_gets_one_latency_measured_at_commit(recorder: Recorder, tmp_path: Path) -> None:
    arrived = time.perf_counter() - 0.05  # the request arrived 50 ms ago
    with recorder.stage(arrived=arrived) as staged:
        staged.add(chunk(3, "req-1"))
        time.sleep(0.02)
        staged.add(chunk(2, "req-1"))
        before = (time.perf_counter() - arrived) * 1000
        staged.commit()
        after = (time.perf_counter() - arrived) * 1000

    rows = [checked(fields) for fields in spooled(tmp_path / "spool")]
    assert len(rows) == 5
    assert {r[9] for r in rows} == {"req-1"}
    latencies = {r[10] for r in rows}
    assert len(latencies) == 1
    latency = latencies.pop()
    assert latency is not None and before - 0.001 <= latency <= after + 0.001


def kept_and_lines(recorder: Recorder) -> tuple[list[list[str]], list[list[str]]]:
    """The rows the writer would take from memory, and the same rows read back from the lines."""
    kept = recorder.spool.next_kept(max_rows=1000)
    batch = recorder.spool.next_batch(max_rows=1000)
    assert kept is not None and batch is not None
    return [list(fields) for fields in kept[1]], [fields for line in batch[1] for fields in spool.decode(line)[1]]


def test_a_request_of_one_chunk_is_one_line_written_once_with_its_latency(recorder: Recorder, tmp_path: Path) -> None:
    """The first chunk is held as rows until commit, then encoded once with the latency in it."""
    arrived = time.perf_counter() - 0.05
    staged = recorder.stage(arrived=arrived)
    staged.add(chunk(2, "req-2"))
    assert staged.rows == 2
    assert spooled(tmp_path / "spool") == []  # nothing on disk before commit
    staged.commit()

    kept, read_back = kept_and_lines(recorder)
    assert kept == read_back and len(read_back) == 2
    assert len(spool.whole_lines(next((tmp_path / "spool").glob(f"*{spool.SUFFIX}")).read_bytes()).splitlines()) == 1
    latencies = {checked(fields)[10] for fields in read_back}
    assert len(latencies) == 1 and 50 <= latencies.pop() < 10_000
    assert PENDING_LATENCY not in "".join(kept[0])


def test_a_held_first_chunk_goes_before_the_chunks_after_it(recorder: Recorder, tmp_path: Path) -> None:
    first, second, third = chunk(1, "r"), chunk(3, "r"), chunk(2, "r")
    with recorder.stage(arrived=time.perf_counter()) as staged:
        staged.add(first)
        staged.add(second)
        now = time.time()
        staged.add_line(spool.encode(third, spooled_at=now), rows=2, spooled_at=now, fields=third)
        assert staged.rows == 6
        staged.commit()
    kept, read_back = kept_and_lines(recorder)
    assert [fields[0] for fields in read_back] == [row[0] for row in first + second + third]
    assert kept == read_back
    assert len({fields[10] for fields in read_back}) == 1


def test_a_held_first_chunk_goes_before_a_line_staged_after_it(recorder: Recorder, tmp_path: Path) -> None:
    """A chunk held as rows, then a chunk already encoded (a line by column): both kept, in order."""
    first, second = chunk(1, "r"), chunk(3, "r")
    with recorder.stage(arrived=time.perf_counter()) as staged:
        staged.add(first)
        now = time.time()
        staged.add_line(spool.encode(second, spooled_at=now), rows=3, spooled_at=now)
        assert staged.rows == 4
        staged.commit()
    rows = [checked(fields) for fields in spooled(tmp_path / "spool")]
    assert [str(r[0]).replace("-", "") for r in rows] == [row[0] for row in first + second]
    assert len({r[10] for r in rows}) == 1 and rows[0][10] is not None


def test_a_held_first_chunk_goes_first_into_a_staged_file(
    recorder: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from titanic_web.recorder import Staged

    monkeypatch.setattr(Staged, "IN_MEMORY_BYTES", 1)  # every line to the staged file
    first, second = chunk(2, "r"), chunk(1, "r")
    with recorder.stage(arrived=time.perf_counter()) as staged:
        staged.add(first)
        staged.add(second)
        staged.commit()
    (segment,) = (tmp_path / "spool").glob(f"*{spool.SUFFIX}")
    rows = spooled(tmp_path / "spool")
    assert [fields[0] for fields in rows] == [row[0] for row in first + second]
    # A published staged file's rows keep the pending field; its name says what it stands for.
    assert {fields[10] for fields in rows} == {PENDING_LATENCY}
    assert float(spool.pending_value(segment.name) or "nan") >= 0.0


def test_a_held_chunk_discarded_leaves_nothing(recorder: Recorder, tmp_path: Path) -> None:
    with recorder.stage(arrived=time.perf_counter()) as staged:
        staged.add(chunk(1, None))
    assert spooled(tmp_path / "spool") == [] and recorder.spool.backlog_rows == 0


def test_staged_rows_without_an_arrival_time_store_no_latency(recorder: Recorder, tmp_path: Path) -> None:
    with recorder.stage() as staged:
        staged.add(chunk(2, None))
        staged.commit()
    assert [checked(fields)[9:] for fields in spooled(tmp_path / "spool")] == [(None, None)] * 2


@pytest.mark.parametrize("latency", [None, 12.5, PENDING_LATENCY])
@pytest.mark.parametrize("request_id", [None, "req-9"])
def test_one_row_is_spooled_as_a_row_of_many(latency: float | str | None, request_id: str | None) -> None:
    """One passenger takes a short way through spool_rows: the same fields as in a bigger chunk."""
    ids = [uuid.uuid4().hex for _ in range(3)]
    columns: dict[str, Any] = {
        "passenger_ids": [892, None, 7],
        "survived": [0, 1, 1],
        "probabilities": [0.1, 2 / 3, 1e-17],
        "features_json": ['{"Age":34.5}', '{"Age":null}', "{}"],
        "raw_json": ['{"Pclass":3}', '{"Pclass":1}', '{"Pclass":2}'],
    }
    options: dict[str, Any] = {
        "model_version": "v1",
        "source": "api",
        "created_at": AT,
        "request_id": request_id,
        "latency_ms": latency,
    }
    together = spool_rows(ids, **columns, **options)
    alone = [
        spool_rows([ids[i]], **{name: [values[i]] for name, values in columns.items()}, **options)[0] for i in range(3)
    ]
    assert alone == together
    assert all(len(row) == len(FIELDS) for row in alone)


@pytest.mark.parametrize(
    "at",
    [
        AT,
        AT.replace(microsecond=7),
        AT + timedelta(seconds=1, microseconds=999_999),
        datetime(2026, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2027, 1, 1, 1, 0, 0, 1, tzinfo=timezone(timedelta(hours=1))),  # second 0, as AT: another minute
        datetime(1999, 2, 3, 4, 5, 6, 500_000, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),
    ],
)
def test_a_time_is_spooled_as_isoformat_writes_it_in_utc(at: datetime) -> None:
    """utc_text keeps the text of the last second it wrote: right for the next time in another
    second, in another zone, or in the same second again."""
    expected = at.astimezone(UTC).isoformat(" ", "microseconds")
    assert utc_text(AT) == AT.isoformat(" ", "microseconds")  # another second first
    assert utc_text(at) == expected
    assert utc_text(at.replace(microsecond=(at.microsecond + 1) % 1_000_000)) == at.replace(
        microsecond=(at.microsecond + 1) % 1_000_000
    ).astimezone(UTC).isoformat(" ", "microseconds")
    assert utc_text(at) == expected  # its second remembered
