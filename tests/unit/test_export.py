"""The export's file writing and its --since/--until values, without a database."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from titanic_web import export
from titanic_web.export import COLUMNS, ExportError, parse_moment

CREATED = datetime(2026, 2, 1, 6, 0, tzinfo=UTC)


def rows(tag: str, count: int) -> list[tuple[Any, ...]]:
    """`count` export rows whose prediction_id is tag-1, tag-2..."""
    blank: list[Any] = [None] * len(COLUMNS)
    blank[COLUMNS.index("created_at")] = CREATED
    found = []
    for i in range(1, count + 1):
        row = list(blank)
        row[COLUMNS.index("prediction_id")] = f"{tag}-{i}"
        found.append(tuple(row))
    return found


def ids(path: Path) -> list[str]:
    return [line["prediction_id"] for line in csv.DictReader(io.StringIO(path.read_text()))]


# -- write ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_two_exports_to_one_path_at_once_each_write_a_whole_file(tmp_path: Path, suffix: str) -> None:
    """The second export runs, start to end, while the first is between two chunks."""
    out = tmp_path / f"daily{suffix}"
    second: list[int] = []

    def first_parts() -> Iterator[Sequence[tuple[Any, ...]]]:
        yield rows("a", 2)
        second.append(export.write(out, iter([rows("b", 3), rows("b2", 1)])))
        yield rows("a2", 2)

    written = export.write(out, first_parts())

    assert (written, second) == (4, [4])
    if suffix == ".csv":
        assert ids(out) == ["a-1", "a-2", "a2-1", "a2-2"]  # the last to finish, whole and alone
    else:
        import pyarrow.parquet as pq

        assert pq.read_table(out).column("prediction_id").to_pylist() == ["a-1", "a-2", "a2-1", "a2-2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name], "no temporary file left"


def test_a_failed_export_leaves_the_previous_file_and_no_temporary_one(tmp_path: Path) -> None:
    out = tmp_path / "daily.csv"
    export.write(out, [rows("old", 2)])

    def failing() -> Iterator[Sequence[tuple[Any, ...]]]:
        yield rows("new", 2)
        raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError):
        export.write(out, failing())

    assert ids(out) == ["old-1", "old-2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        (lambda tmp: tmp / "no-such-folder" / "x.csv", "the folder {tmp}/no-such-folder does not exist: create it"),
        (lambda tmp: tmp / "a-folder.csv", "it is a folder: name a file in it instead"),
    ],
    ids=["missing-folder", "a-folder"],
)
def test_a_path_that_cannot_be_written_is_an_export_error(tmp_path: Path, where: Any, reason: str) -> None:
    (tmp_path / "a-folder.csv").mkdir()
    out = where(tmp_path)

    with pytest.raises(ExportError) as raised:
        export.write(out, [rows("a", 1)])

    assert str(raised.value).startswith(f"cannot write {out}: ")
    assert reason.format(tmp=tmp_path) in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-folder.csv"]


def test_a_folder_without_write_permission_is_an_export_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Path, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refuse)  # as for a folder of another user (the tests run as root)

    message = f"cannot write {tmp_path}/x.csv: permission denied in {tmp_path}: choose a folder you may write to"
    with pytest.raises(ExportError, match=re.escape(message)):
        export.write(tmp_path / "x.csv", [rows("a", 1)])


# -- --since and --until --------------------------------------------------------------------------


@pytest.mark.parametrize("day", ["2030-01-01", "20300101", " 2030-01-01 "])
def test_a_date_alone_is_its_whole_day_however_iso_spells_it(day: str) -> None:
    assert parse_moment(day) == datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_moment(day, end=True) == datetime(2030, 1, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2030-01-01T00:00:00", datetime(2030, 1, 1, tzinfo=UTC)),
        ("20300101T120000", datetime(2030, 1, 1, 12, tzinfo=UTC)),
        ("2030-01-01T05:00+02:00", datetime(2030, 1, 1, 3, tzinfo=UTC)),
    ],
)
def test_a_time_is_a_moment_as_a_start_and_as_an_end(text: str, moment: datetime) -> None:
    assert parse_moment(text) == moment
    assert parse_moment(text, end=True) == moment


@pytest.mark.parametrize("text", ["last week", "2030-13-01", "2030-01-01T25:00", ""])
def test_neither_a_date_nor_a_time_is_named(text: str) -> None:
    with pytest.raises(ValueError, match=f"{text!r} is not a date"):
        parse_moment(text)
