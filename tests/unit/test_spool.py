"""The local-disk spool: lines, segments, delivery offsets, orphans, rotation, scan, disk errors."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FullDisk
from titanic_web import spool as spool_module
from titanic_web.spool import SUFFIX, Spool, SpoolError, decode, encode, line_rows, line_time, scan

MakeSpool = Callable[..., Spool]
#: The real one: a fixture below makes every folder ext4 for the other tests.
FILE_SYSTEM = spool_module.file_system


@pytest.fixture(autouse=True)
def mappable_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spool folders count as ext4, where segments are mapped, whatever file system the
    machine's temporary folder is on; a test that needs another says so."""
    monkeypatch.setattr(spool_module, "file_system", lambda path: "ext4")


@pytest.fixture
def make_spool(tmp_path: Path) -> Iterator[MakeSpool]:
    """Spools over tmp_path/spool (or another folder); all are closed after the test."""
    made: list[Spool] = []

    def make(directory: Path | None = None, **options: Any) -> Spool:
        spool = Spool(directory or tmp_path / "spool", **options)
        made.append(spool)
        return spool

    yield make
    for spool in made:
        spool.close()


def put(spool: Spool, ids: list[str], *, at: float | None = None) -> bytes:
    """Append one line holding one record per id; return the line."""
    at = time.time() if at is None else at
    line = encode([[i] for i in ids], spooled_at=at)
    spool.append(line, rows=len(ids), spooled_at=at)
    return line


def ids_of(lines: list[bytes]) -> list[str]:
    return [row[0] for line in lines for row in decode(line)[1]]


def drain(spool: Spool, *, max_rows: int = 1000) -> list[str]:
    """Deliver everything the spool offers, as the writer does; return the ids in order."""
    delivered: list[str] = []
    for _ in range(10_000):
        batch = spool.next_batch(max_rows=max_rows)
        if batch is None:
            return delivered
        segment, lines, end = batch
        delivered += ids_of(lines)
        spool.delivered(segment, end)
    raise AssertionError("the spool never ran dry")


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SUFFIX}"))


# -- lines ------------------------------------------------------------------


def test_encode_decode_round_trip() -> None:
    rows = [["a", "", '{"Age":null,"Name":"two\\nlines"}'], ["b", "1.5", "{}"], ["c", "x y", "[]"]]
    line = encode(rows, spooled_at=12.5)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert decode(line) == (12.5, rows)
    assert line_rows(line) == 3
    assert decode(encode([], spooled_at=2.0)) == (2.0, [])


def test_a_line_keeps_its_time_to_the_millisecond() -> None:
    now = time.time()
    assert abs(decode(encode([["a"]], spooled_at=now))[0] - now) <= 0.0005
    assert line_time(encode([["a"]], spooled_at=1_733_500_000.1234)) == 1_733_500_000.123
    assert line_time(spool_module.encode_columns(1, ["=a"], spooled_at=2.0006)) == 2.001


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        ([["a", "tab\there"]], "tab or a newline"),
        ([["a", "new\nline"]], "tab or a newline"),
        ([["a", "b"], ["c"]], "same width"),
    ],
)
def test_encode_refuses_fields_that_would_not_split_back(rows: list[list[str]], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        encode(rows, spooled_at=1.0)


@pytest.mark.parametrize(
    "line",
    [b"\n", b"garbage\n", b"2\t1.0\ta\tb\tc\n", b"0\t1.0\tstray\n", b"x\t1.0\ta\n", b"1\tnow\ta\n", b"\xff\xfe\n"],
)
def test_decode_refuses_damaged_lines(line: bytes) -> None:
    with pytest.raises(ValueError):
        decode(line)


def test_line_rows_reads_the_count_without_the_records() -> None:
    assert line_rows(encode([], spooled_at=1.0)) == 0
    assert line_rows(encode([[str(i), "x"] for i in range(1234)], spooled_at=1.0)) == 1234
    assert line_rows(b"garbage\n") == 1  # unreadable count: counted as one row, not a crash


@pytest.mark.parametrize(
    "row",
    [["a"], ["a", "", "{}"], ["", ""], ["id", '{"Name":"two\\nlines"}', "1.5", "\x01"]],
)
def test_a_line_of_one_row_is_a_line_of_many_with_one(row: list[str]) -> None:
    """One row takes a short way through encode: the same line as the general one."""
    line = encode([row], spooled_at=7.25)
    assert line == ("\t".join(["1", "7.250", *row]) + "\n").encode()
    assert decode(line) == (7.25, [row])
    assert encode([row, row], spooled_at=7.25) == ("\t".join(["2", "7.250", *row, *row]) + "\n").encode()


@pytest.mark.parametrize("bad", ["tab\there", "new\nline"])
def test_a_row_alone_with_a_tab_or_newline_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="tab or a newline"):
        encode([["ok", bad]], spooled_at=1.0)


# -- lines by column --------------------------------------------------------

COLUMN_ROWS = [
    ["0" * 31 + "a", "", "1", "0.9", "v1", "api", '{"A":null,"B":"x"}', '{"n":1,"s":"a"}', "\x01"],
    ["0" * 31 + "b", "892", "0", "-0.0", "v1", "api", '{"A":-0.0,"B":"caf\\u00e9"}', '{"n":2,"s":"\\t"}', "\x01"],
    ["0" * 31 + "c", "7", "1", "1e-300", "v1", "api", '{"A":1.5,"B":"x"}', '{"n":3,"s":""}', "\x01"],
]


def by_column(rows: list[list[str]] = COLUMN_ROWS, *, spooled_at: float = 12.5) -> bytes:
    """COLUMN_ROWS as a line by column, each kind of column once."""
    return spool_module.encode_columns(
        len(rows),
        [
            spool_module.fixed([r[0] for r in rows], width=32),
            spool_module.ints([int(r[1]) if r[1] else None for r in rows]),
            spool_module.ints([int(r[2]) for r in rows]),
            spool_module.floats([float(r[3]) for r in rows]),
            spool_module.same("v1"),
            spool_module.same("api"),
            spool_module.objects(["A"], [[math.nan, -0.0, 1.5]], ["B"], [["x", "caf\u00e9", "x"]]),
            spool_module.pieces([['"n":1', '"n":2', '"n":3'], ['"s":"a"', '"s":"\\t"', '"s":""']]),
            spool_module.same("\x01"),
        ],
        spooled_at=spooled_at,
    )


def one_column(column: str) -> bytes:
    return spool_module.encode_columns(1, [column], spooled_at=1.0)


def test_a_line_by_column_decodes_to_the_rows_a_line_by_row_keeps() -> None:
    line = by_column()
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert decode(line) == (12.5, COLUMN_ROWS) == decode(encode(COLUMN_ROWS, spooled_at=12.5))
    assert line_rows(line) == 3
    assert line_time(line) == 12.5
    # The rows' shared pending field is one byte, replaced at commit like a line by row's.
    assert decode(line.replace(b"\x01", b"4.25"))[1][2][-1] == "4.25"


@pytest.mark.parametrize(
    ("column", "problem"),
    [
        (lambda: spool_module.fixed(["abc", "ab"], width=3), "3 characters"),
        (lambda: spool_module.ints([1, True]), "something else"),
        (lambda: spool_module.ints([1.0]), "something else"),
        (lambda: spool_module.pieces([["a\x1fb", "c"]]), "unit or record separator"),
        (lambda: spool_module.pieces([["a\x1eb", "c"]]), "unit or record separator"),
        (lambda: spool_module.pieces([["a", "b"], ["c"]]), "one length"),
        (lambda: spool_module.pieces([]), "one length"),
        (lambda: spool_module.objects(["A"], [[1.0]], ["B"], [[None]]), "must be strings"),
        (lambda: spool_module.objects(["A"], [[1.0]], [7], [["x"]]), "must be strings"),
        (lambda: spool_module.objects(["A"], [[1.0, 2.0]], ["B"], [["x"]]), "one length"),
        (lambda: spool_module.objects(["A", "C"], [[1.0]], ["B"], [["x"]]), "3 names for 2 columns"),
        (lambda: spool_module.encode_columns(1, [spool_module.same("tab\there")], spooled_at=1.0), "tab or a newline"),
        (
            lambda: spool_module.encode_columns(1, [spool_module.pieces([["new\nline"]])], spooled_at=1.0),
            "tab or a newline",
        ),
    ],
)
def test_a_column_that_would_not_come_back_the_same_is_refused(column: Callable[[], object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        column()


def damaged(position: int, replacement: str) -> bytes:
    fields = by_column().decode().rstrip("\n").split("\t")
    fields[position] = replacement
    return ("\t".join(fields) + "\n").encode()


@pytest.mark.parametrize(
    "line",
    [
        damaged(0, "4"),  # more rows than the columns hold
        damaged(0, "0"),
        damaged(3, "w32:" + "0" * 95),  # a fixed column cut short
        damaged(4, "i[1,2]"),
        damaged(4, 'i[1,"2",3]'),
        damaged(4, "i[1,2,3"),
        damaged(6, "f" + "A" * 8),  # too few numbers
        damaged(6, "f!!!!"),  # not base64
        damaged(9, damaged_objects := "o" + '[["A"],["B"]]' + "\x1f" + "AAAA" + "\x1f" + '[["x","y","z"]]'),
        damaged(9, damaged_objects.replace('[["A"],["B"]]', '[["A"]]')),
        damaged(9, "o" + '[["A"],["B"]]'),
        damaged(10, "p" + '"n":1\x1f"n":2'),
        damaged(10, "p" + '"n":1\x1f"n":2\x1f"n":3\x1e"s":1'),
        damaged(10, "?what"),
        b"3\t1.0\tby-column/1\n",
        b"1000000000000\t1.0\tby-column/1\t=x\n",  # more rows than bytes: not built, refused
        b"1\t1.0\tby-column/1\ti" + b"[" * 200_000 + b"\n",  # JSON past the recursion limit
    ],
)
def test_decode_refuses_damaged_lines_by_column(line: bytes) -> None:
    with pytest.raises(ValueError):
        decode(line)


@pytest.mark.parametrize("line", [b"\n", b"garbage\n", b"1\tnow\ta\n", b"\xff\t\xfe\n"])
def test_line_time_refuses_a_line_without_a_time(line: bytes) -> None:
    with pytest.raises(ValueError):
        line_time(line)


# -- append and deliver ---------------------------------------------------


def test_append_then_deliver_in_batches_and_in_order(make_spool: MakeSpool, tmp_path: Path) -> None:
    spool = make_spool()
    first = put(spool, ["a1", "a2"])
    second = put(spool, ["b1"])
    put(spool, ["c1", "c2", "c3"])

    batch = spool.next_batch(max_rows=3)
    assert batch is not None
    segment, lines, end = batch
    assert lines == [first, second]
    assert end == len(first) + len(second)
    # Not yet marked delivered: the same batch is offered again.
    again = spool.next_batch(max_rows=3)
    assert again is not None and again[1] == lines and again[2] == end

    spool.delivered(segment, end)
    assert segment.done_path.read_text() == str(end)
    assert spool.backlog()[0] == 3

    assert drain(spool, max_rows=3) == ["c1", "c2", "c3"]
    assert spool.next_batch(max_rows=3) is None
    assert spool.backlog() == (0, None)


def keep(spool: Spool, ids: list[str]) -> bytes:
    """Append one line holding one record per id, its rows kept in memory too; return the line."""
    rows = [[i] for i in ids]
    line = encode(rows, spooled_at=time.time())
    spool.append(line, rows=len(ids), spooled_at=time.time(), fields=rows)
    return line


def test_kept_rows_are_offered_in_order_up_to_the_first_line_not_kept(make_spool: MakeSpool) -> None:
    """The writer takes its own lines' rows from memory, as far as they were kept; the rest it
    reads back: together, every line once and in order, whichever way it came."""
    spool = make_spool()
    first, second = keep(spool, ["a1", "a2"]), keep(spool, ["b1"])
    third = put(spool, ["c1"])  # not kept
    keep(spool, ["d1"])

    kept = spool.next_kept(max_rows=10)
    assert kept is not None
    segment, rows, end = kept
    assert rows == [["a1"], ["a2"], ["b1"]] and end == len(first) + len(second)
    assert spool.next_kept(max_rows=10) == kept  # offered again until marked delivered
    assert spool.kept_rows == 4
    spool.delivered(segment, end)
    assert spool.kept_rows == 1 and spool.backlog()[0] == 2

    assert spool.next_kept(max_rows=10) is None  # c1 was not kept: read back
    batch = spool.next_batch(max_rows=1)
    assert batch is not None and batch[1] == [third]
    spool.delivered(batch[0], batch[2])
    kept = spool.next_kept(max_rows=10)
    assert kept is not None and kept[1] == [["d1"]] and kept[2] == segment.size
    spool.delivered(kept[0], kept[2])
    assert (spool.kept_rows, spool.backlog()) == (0, (0, None))
    assert spool.next_kept(max_rows=10) is None and spool.next_batch(max_rows=10) is None


def test_a_closed_spool_counts_nothing_it_no_longer_holds(make_spool: MakeSpool, tmp_path: Path) -> None:
    """close() hands the undelivered lines back to the disk: whoever adopts them counts them,
    and this spool, if used again, starts from nothing waiting and nothing kept."""
    spool = make_spool()
    keep(spool, ["a1", "a2"])
    spool.close()
    assert (spool.backlog_rows, spool.kept_rows, spool.backlog()) == (0, 0, (0, None))
    keep(spool, ["b1"])
    assert (spool.backlog_rows, spool.kept_rows) == (1, 1)
    adopter = make_spool()
    assert adopter.adopt_orphans() == 1 and adopter.backlog_rows == 2 and adopter.kept_rows == 0


def test_kept_rows_stop_at_max_rows_and_at_kept_rows(make_spool: MakeSpool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch holds about max_rows rows (whole lines); past KEPT_ROWS waiting, lines are not
    kept (memory stays bounded while the database is down) and are read back instead."""
    monkeypatch.setattr(Spool, "KEPT_ROWS", 3)
    spool = make_spool()
    keep(spool, ["a1", "a2"])
    keep(spool, ["b1"])
    over = keep(spool, ["c1"])  # a fourth row waiting: not kept
    kept = spool.next_kept(max_rows=1)
    assert kept is not None and kept[1] == [["a1"], ["a2"]]  # one whole line
    assert spool.kept_rows == 3
    spool.delivered(kept[0], kept[2])
    kept = spool.next_kept(max_rows=10)
    assert kept is not None and kept[1] == [["b1"]]
    spool.delivered(kept[0], kept[2])
    assert spool.next_kept(max_rows=10) is None
    batch = spool.next_batch(max_rows=10)
    assert batch is not None and batch[1] == [over]
    spool.delivered(batch[0], batch[2])
    keep(spool, ["e1"])  # room again
    assert spool.kept_rows == 1 and spool.next_kept(max_rows=10) is not None


def test_a_line_larger_than_the_batch_is_delivered_whole(make_spool: MakeSpool) -> None:
    spool = make_spool()
    put(spool, [f"r{i}" for i in range(5)])
    batch = spool.next_batch(max_rows=2)
    assert batch is not None
    assert ids_of(batch[1]) == [f"r{i}" for i in range(5)]


def test_done_offset_persists_and_an_adopter_resumes_from_it(make_spool: MakeSpool, tmp_path: Path) -> None:
    first = make_spool()
    put(first, ["a"])
    put(first, ["b"])
    put(first, ["c"])
    batch = first.next_batch(max_rows=1)
    assert batch is not None
    segment, lines, end = batch
    assert ids_of(lines) == ["a"]
    first.delivered(segment, end)
    path, done_path = segment.path, segment.done_path
    first.close()  # the process stops: its undelivered lines stay on disk
    assert path.exists()
    assert int(done_path.read_text()) == end

    second = make_spool()
    assert second.adopt_orphans() == 1
    assert second.backlog()[0] == 2
    assert drain(second) == ["b", "c"]
    assert second.backlog() == (0, None)
    # An adopted segment is sealed: once delivered, it and its offset file are gone.
    assert files(tmp_path / "spool") == []


def test_a_line_by_column_is_counted_adopted_and_delivered_as_its_rows(make_spool: MakeSpool, tmp_path: Path) -> None:
    first = make_spool()
    first.append(by_column(spooled_at=20.0), rows=3, spooled_at=20.0)
    put(first, ["a"], at=30.0)
    first.close()
    directory = tmp_path / "spool"
    assert scan(directory) == {"segments": 1, "orphaned": 1, "rows": 4, "oldest_spooled_at": 20.0}

    adopter = make_spool()
    assert adopter.adopt_orphans() == 1
    assert adopter.backlog() == (4, 20.0)  # counts and times read from the lines, rows not decoded
    assert drain(adopter, max_rows=2) == [*(row[0] for row in COLUMN_ROWS), "a"]
    assert scan(directory)["rows"] == 0


def test_a_batch_in_flight_when_the_process_stopped_is_sent_again(make_spool: MakeSpool) -> None:
    first = make_spool()
    put(first, ["a", "b"])
    assert first.next_batch(max_rows=10) is not None  # written to the database, maybe; not marked
    first.close()

    second = make_spool()
    assert second.adopt_orphans() == 1
    assert drain(second) == ["a", "b"]  # at least once: the uuid makes the resend harmless


def test_torn_last_line_is_never_delivered(make_spool: MakeSpool, tmp_path: Path) -> None:
    first = make_spool()
    put(first, ["a"])
    put(first, ["b"])
    assert first.active is not None and first.active.write_fd is not None
    # A write cut short by a crash: no newline.
    os.pwrite(first.active.write_fd, b"1\t1.0\ttorn", first.active.size)
    first.close()

    assert scan(tmp_path / "spool")["rows"] == 2
    second = make_spool()
    assert second.adopt_orphans() == 1
    assert second.backlog()[0] == 2
    assert drain(second) == ["a", "b"]
    assert second.next_batch(max_rows=10) is None
    assert files(tmp_path / "spool") == []


@contextlib.contextmanager
def ready_child(script: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A Python process running script with args, once it has printed "ready"; killed at the end if alive."""
    with subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            yield child
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)


def kill(child: subprocess.Popen[str]) -> None:
    """SIGKILL, as the kernel ends a process that gets no chance to clean up."""
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGKILL


CHILD = r"""
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("spool_under_test", sys.argv[1])
spool = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = spool
spec.loader.exec_module(spool)
spool.file_system = lambda path: "ext4"  # mapped, whatever the machine's temporary folder is on
s = spool.Spool(sys.argv[2])
for i in range(int(sys.argv[3])):
    now = time.time()
    s.append(spool.encode([[f"child-{i}"]], spooled_at=now), rows=1, spooled_at=now)
assert s.active.map is not None  # the lines above were copied into the mapped file, not written
os.pwrite(s.active.write_fd, b"1\t1.0\ttorn", s.active.size)  # killed mid-write
print("ready", flush=True)
time.sleep(60)
"""


def test_live_segment_of_another_process_is_left_alone_until_it_is_killed(
    make_spool: MakeSpool, tmp_path: Path
) -> None:
    directory = tmp_path / "spool"
    with ready_child(CHILD, spool_module.__file__, str(directory), "3") as child:
        assert len(segment_files(directory)) == 1

        adopter = make_spool()
        assert adopter.adopt_orphans() == 0, "adopted a segment whose owner is alive"
        assert adopter.next_batch(max_rows=10) is None
        found = scan(directory)
        assert (found["segments"], found["orphaned"], found["rows"]) == (1, 0, 3)

        kill(child)

    assert scan(directory)["orphaned"] == 1
    assert adopter.adopt_orphans() == 1
    assert drain(adopter) == ["child-0", "child-1", "child-2"]
    assert files(directory) == []


def test_live_segment_of_another_spool_in_this_process_is_left_alone(make_spool: MakeSpool) -> None:
    owner = make_spool()
    put(owner, ["mine"])
    other = make_spool()
    assert other.adopt_orphans() == 0
    assert other.next_batch(max_rows=10) is None
    assert drain(owner) == ["mine"]


def test_adopting_twice_queues_a_segment_once(make_spool: MakeSpool) -> None:
    first = make_spool()
    put(first, ["a"])
    first.close()
    second = make_spool()
    assert second.adopt_orphans() == 1
    assert second.adopt_orphans() == 0
    assert drain(second) == ["a"]


# -- rotation and retirement ------------------------------------------------


def test_rotation_seals_segments_and_deletes_them_once_delivered(make_spool: MakeSpool, tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    line_size = len(encode([["x0"]], spooled_at=1.0))
    spool = make_spool(segment_bytes=2 * line_size)  # two lines per segment
    for i in range(5):
        put(spool, [f"x{i}"], at=1.0)
    assert len(segment_files(directory)) == 3

    batch = spool.next_batch(max_rows=1)
    assert batch is not None
    spool.delivered(batch[0], batch[2])
    assert len(segment_files(directory)) == 3  # half of the first segment is still waiting

    assert drain(spool) == ["x1", "x2", "x3", "x4"]
    # The two full (sealed) segments are gone; the active one stays until close.
    assert spool.active is not None
    assert segment_files(directory) == [spool.active.path]
    spool.close()
    assert files(directory) == []


def test_every_append_rotates_when_segment_bytes_is_tiny(make_spool: MakeSpool, tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = make_spool(segment_bytes=1)
    for i in range(3):
        put(spool, [f"y{i}"])
    assert len(segment_files(directory)) == 3
    assert spool.active is None
    assert drain(spool) == ["y0", "y1", "y2"]
    assert files(directory) == []


# -- preallocated segments ----------------------------------------------------


def test_a_new_segment_has_its_full_size_at_once_and_lines_written_from_its_start(
    make_spool: MakeSpool, tmp_path: Path
) -> None:
    spool = make_spool(segment_bytes=64 << 10)
    lines = [put(spool, [f"p{i}"]) for i in range(3)]
    (path,) = segment_files(tmp_path / "spool")
    data = path.read_bytes()
    assert len(data) == 64 << 10  # preallocated: a line writes in place, the file does not grow
    assert data.startswith(b"".join(lines))
    assert data[len(b"".join(lines)) :] == bytes(len(data) - len(b"".join(lines)))
    assert spool_module.whole_lines(data) == b"".join(lines)
    assert drain(spool) == ["p0", "p1", "p2"]


def test_the_zeros_of_a_preallocated_segment_are_no_lines_to_an_adopter_or_a_scan(
    make_spool: MakeSpool, tmp_path: Path
) -> None:
    first = make_spool(segment_bytes=4 << 20)  # more than one read of the file: its zeros are not read to the end
    for i in range(3):
        put(first, [f"q{i}"])
    first.close()  # undelivered: the segment stays, with its unwritten zeros
    (path,) = segment_files(tmp_path / "spool")
    assert path.stat().st_size == 4 << 20

    assert scan(tmp_path / "spool")["rows"] == 3
    second = make_spool()
    assert second.adopt_orphans() == 1
    assert second.backlog()[0] == 3
    assert drain(second) == ["q0", "q1", "q2"]
    assert files(tmp_path / "spool") == []  # delivered to its last line: the zeros do not keep it


def test_a_file_system_that_cannot_preallocate_gets_lines_that_grow_the_file(
    make_spool: MakeSpool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(spool_module.os, "posix_fallocate", unsupported)
    spool = make_spool(segment_bytes=64 << 10)
    lines = [put(spool, [f"r{i}"]) for i in range(2)]
    (path,) = segment_files(tmp_path / "spool")
    assert path.read_bytes() == b"".join(lines)
    assert drain(spool) == ["r0", "r1"]


def written_lines(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Lines the spool writes with a system call from now on (not those copied into a mapping)."""
    calls: list[bytes] = []
    real = spool_module._write_all

    def record(fd: int, data: bytes, offset: int) -> None:
        calls.append(data)
        real(fd, data, offset)

    monkeypatch.setattr(spool_module, "_write_all", record)
    return calls


def test_lines_are_copied_into_the_mapped_segment_without_a_system_call(
    make_spool: MakeSpool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = written_lines(monkeypatch)
    spool = make_spool(segment_bytes=64 << 10)
    lines = [put(spool, [f"m{i}"]) for i in range(3)]
    assert spool.active is not None and spool.active.map is not None
    assert written == []
    (path,) = segment_files(tmp_path / "spool")
    assert spool_module.whole_lines(path.read_bytes()) == b"".join(lines)  # in the file, read as any reader does
    assert drain(spool) == ["m0", "m1", "m2"]


def test_a_line_past_the_mapping_starts_a_new_segment_and_nothing_is_written(
    make_spool: MakeSpool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past a mapping are blocks the disk may not have: a line that does not fit goes to a new
    segment, and the full one is sealed with its zeros."""
    written = written_lines(monkeypatch)
    line_size = len(encode([["x0"]], spooled_at=1.0))
    spool = make_spool(segment_bytes=2 * line_size + line_size // 2)  # room for two lines and a half
    lines = [put(spool, [f"x{i}"], at=1.0) for i in range(4)]
    assert written == []
    first, second = segment_files(tmp_path / "spool")
    assert spool_module.whole_lines(first.read_bytes()) == b"".join(lines[:2])
    assert spool_module.whole_lines(second.read_bytes()) == b"".join(lines[2:])
    assert drain(spool) == ["x0", "x1", "x2", "x3"]
    assert segment_files(tmp_path / "spool") == [second]  # the sealed one is delivered and gone


def test_a_line_longer_than_a_segment_is_written_alone(
    make_spool: MakeSpool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = written_lines(monkeypatch)
    spool = make_spool(segment_bytes=4096)
    small = put(spool, ["s0"])
    big = put(spool, [f"b{i:04d}" for i in range(1000)])  # about 6 kB
    after = put(spool, ["s1"])
    assert written == [big]
    files_now = segment_files(tmp_path / "spool")
    assert [spool_module.whole_lines(f.read_bytes()) for f in files_now] == [small, big, after]
    assert files_now[1].read_bytes() == big  # grown by its one line, no zeros
    assert drain(spool) == ["s0", *(f"b{i:04d}" for i in range(1000)), "s1"]


def test_a_disk_that_fills_after_a_segment_was_mapped_fails_requests_and_loses_no_answer(
    make_spool: MakeSpool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mapping is never written past, and never cut under: while the disk is full every
    line that needs new blocks is refused, and every line accepted is in the files."""
    disk = FullDisk()
    disk.full = False
    monkeypatch.setattr(spool_module, "os", disk)
    spool = make_spool(segment_bytes=16 << 10)
    answered = [f"a{i}" for i in range(3)]
    for i in answered:
        put(spool, [i])
    assert spool.active is not None and spool.active.map is not None

    disk.full = True
    with pytest.raises(SpoolError):
        put(spool, [f"big{i:05d}" for i in range(3000)])  # past the mapping: a new segment, refused
    with pytest.raises(SpoolError):
        put(spool, ["refused"])  # the new segment has no blocks: refused too, not copied anywhere
    disk.full = False
    put(spool, ["a3"])
    answered.append("a3")
    spool.close()

    on_disk = [
        row[0]
        for path in segment_files(tmp_path / "spool")
        for line in spool_module.whole_lines(path.read_bytes()).splitlines(keepends=True)
        for row in decode(line)[1]
    ]
    assert sorted(on_disk) == sorted(answered)
    adopter = make_spool()
    adopter.adopt_orphans()
    assert sorted(drain(adopter)) == sorted(answered)


def test_a_segment_on_a_file_system_not_known_to_keep_its_blocks_is_written(
    make_spool: MakeSpool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "file_system", lambda path: "btrfs")
    written = written_lines(monkeypatch)
    spool = make_spool()
    line = put(spool, ["c0"])
    assert spool.active is not None and spool.active.map is None
    assert written == [line]
    assert drain(spool) == ["c0"]


MOUNTINFO = (
    "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    "23 22 0:21 / /proc rw,nosuid shared:2 - proc proc rw\n"
    "24 22 0:40 / /srv/x rw shared:3 master:1 - ext4 /dev/vdb rw\n"
    "25 24 0:41 / /srv/x/spool rw - tmpfs tmpfs rw\n"
    "26 22 0:42 / /srv/x rw - btrfs /dev/vdc rw\n"
    "27 22 0:43 / /srv/my\\040spool rw - xfs /dev/vdd rw\n"
    "28 22 254:0 /data /mnt/data rw - ext4 /dev/vda rw\n"
    "29 22 0:44 / /odd rw - \n"
    "garbage\n"
)


@pytest.mark.parametrize(
    ("device", "kind"),
    [
        ("254:0", "ext4"),  # mounted twice (a bind mount): one type
        ("0:21", "proc"),
        ("0:41", "tmpfs"),  # what a file on it reports, mounted over or not: its own device
        ("0:42", "btrfs"),
        ("0:43", "xfs"),
        ("0:44", None),  # no type after the separator
        ("9:9", None),  # not mounted here (a btrfs subvolume's own device, say): not known
    ],
)
def test_a_device_has_the_type_of_its_last_mount(device: str, kind: str | None) -> None:
    assert spool_module.mount_type(MOUNTINFO, device) == kind


def test_the_file_system_of_a_folder_is_read_from_this_process_mounts(tmp_path: Path) -> None:
    device = os.stat(tmp_path).st_dev
    expected = spool_module.mount_type(
        Path("/proc/self/mountinfo").read_text(errors="surrogateescape"), f"{os.major(device)}:{os.minor(device)}"
    )
    assert FILE_SYSTEM(tmp_path) == expected
    assert FILE_SYSTEM(tmp_path / "missing") is None


def test_a_segment_is_made_whole_when_the_file_system_cannot_be_told(
    make_spool: MakeSpool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "file_system", lambda path: None)
    spool = make_spool()
    put(spool, ["u0"])
    assert spool.active is not None and spool.active.map is None
    assert drain(spool) == ["u0"]


def test_the_zeros_of_a_preallocated_segment_are_not_read_to_its_end(
    make_spool: MakeSpool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_spool(segment_bytes=8 << 20)
    put(first, ["z0"])
    first.close()
    read: list[int] = []
    real_pread = os.pread

    def pread(fd: int, size: int, offset: int) -> bytes:
        data = real_pread(fd, size, offset)
        read.append(len(data))
        return data

    monkeypatch.setattr(spool_module.os, "pread", pread)
    assert scan(tmp_path / "spool")["rows"] == 1
    assert 0 < sum(read) <= 1 << 20  # one read: the zeros after the line end the file's lines


def test_with_fsync_lines_are_written_and_flushed_not_mapped(
    make_spool: MakeSpool, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = written_lines(monkeypatch)
    flushed: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(spool_module.os, "fsync", lambda fd: flushed.append(fd) or real_fsync(fd))
    spool = make_spool(fsync=True)
    line = put(spool, ["f0"])
    assert spool.active is not None and spool.active.map is None
    assert written == [line] and flushed == [spool.active.write_fd]
    assert drain(spool) == ["f0"]


def test_a_segment_that_cannot_be_mapped_gets_its_lines_written(
    make_spool: MakeSpool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(spool_module.mmap, "mmap", refuse)
    written = written_lines(monkeypatch)
    spool = make_spool()
    line = put(spool, ["w0"])
    assert written == [line]
    assert drain(spool) == ["w0"]


@pytest.mark.parametrize(
    ("data", "whole"),
    [
        (b"", b""),
        (b"a\tb\n", b"a\tb\n"),
        (b"a\n" + bytes(10), b"a\n"),
        (b"a\nb\ncut sh", b"a\nb\n"),
        (b"a\ncut" + bytes(5), b"a\n"),
        (bytes(8), b""),
    ],
)
def test_whole_lines_stop_at_the_end_of_the_last_line(data: bytes, whole: bytes) -> None:
    assert spool_module.whole_lines(data) == whole


# -- what is waiting ----------------------------------------------------------


def test_backlog_counts_rows_and_keeps_the_oldest_time(make_spool: MakeSpool) -> None:
    spool = make_spool()
    assert spool.backlog() == (0, None)
    put(spool, ["a"], at=100.0)
    put(spool, ["b", "c"], at=200.0)
    put(spool, ["d", "e", "f"], at=300.0)
    assert spool.backlog() == (6, 100.0)

    batch = spool.next_batch(max_rows=1)
    assert batch is not None
    spool.delivered(batch[0], batch[2])
    assert spool.backlog() == (5, 200.0)

    drain(spool)
    assert spool.backlog() == (0, None)


def test_scan_counts_rows_segments_and_orphans(make_spool: MakeSpool, tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    assert scan(directory) == {"segments": 0, "orphaned": 0, "rows": 0, "oldest_spooled_at": None}

    live = make_spool()
    put(live, ["a"], at=50.0)
    put(live, ["b", "c"], at=60.0)
    assert scan(directory) == {"segments": 1, "orphaned": 0, "rows": 3, "oldest_spooled_at": 50.0}

    batch = live.next_batch(max_rows=1)
    assert batch is not None
    live.delivered(batch[0], batch[2])
    assert scan(directory) == {"segments": 1, "orphaned": 0, "rows": 2, "oldest_spooled_at": 60.0}

    live.close()
    assert scan(directory) == {"segments": 1, "orphaned": 1, "rows": 2, "oldest_spooled_at": 60.0}

    other = make_spool(segment_bytes=1)
    put(other, ["d"], at=40.0)
    other.close()
    assert scan(directory) == {"segments": 2, "orphaned": 2, "rows": 3, "oldest_spooled_at": 40.0}

    adopter = make_spool()
    assert adopter.adopt_orphans() == 2
    assert scan(directory)["orphaned"] == 0  # held again, by a live process
    assert sorted(drain(adopter)) == ["b", "c", "d"]
    assert scan(directory) == {"segments": 0, "orphaned": 0, "rows": 0, "oldest_spooled_at": None}


def test_only_old_tmp_files_are_cleaned(make_spool: MakeSpool, tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    stale = directory / ".host-1-1-dead.tmp"
    stale.touch()
    old = time.time() - spool_module.STALE_TMP_SECONDS - 5
    os.utime(stale, (old, old))
    being_created = directory / ".host-2-2-live.tmp"  # its creator has not locked it yet
    being_created.touch()

    assert make_spool().adopt_orphans() == 0

    assert not stale.exists()
    assert being_created.exists()


def test_stale_done_tmp_of_a_delivered_segment_is_cleaned(make_spool: MakeSpool, tmp_path: Path) -> None:
    """A crash between writing <segment>.done.tmp and renaming it leaves the .tmp behind;
    once that segment is adopted and delivered, nothing of it may stay on disk."""
    directory = tmp_path / "spool"
    first = make_spool()
    put(first, ["a"])
    segment = first.segments[0]
    first.close()
    leftover = segment.done_path.with_name(segment.done_path.name + ".tmp")
    leftover.write_text("0")  # killed after write_text, before os.replace

    adopter = make_spool()
    assert adopter.adopt_orphans() == 1
    assert drain(adopter) == ["a"]
    assert files(directory) == [], f"left on disk after delivery: {files(directory)}"


# -- a disk that refuses ------------------------------------------------------


def test_unusable_directory_raises_spool_error(make_spool: MakeSpool, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    spool = make_spool(blocker / "spool")
    with pytest.raises(SpoolError) as raised:
        put(spool, ["a"])
    assert isinstance(raised.value, OSError)
    assert raised.value.errno in (errno.ENOTDIR, errno.EEXIST)
    assert str(blocker / "spool") in str(raised.value)
    assert spool.backlog() == (0, None)
    assert spool.adopt_orphans() == 0
    assert scan(blocker / "spool")["rows"] == 0


def test_disk_full_raises_spool_error_and_keeps_nothing(make_spool: MakeSpool, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = make_spool()
    disk = FullDisk()
    monkeypatch.setattr(spool_module, "os", disk)
    with pytest.raises(SpoolError) as raised:
        put(spool, ["lost"])
    assert raised.value.errno == errno.ENOSPC
    assert spool.backlog() == (0, None)

    disk.full = False
    put(spool, ["kept"])
    assert drain(spool) == ["kept"]


def test_a_line_cut_short_by_a_full_disk_does_not_poison_later_lines(
    make_spool: MakeSpool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk takes half a line, then refuses: that request failed (503). When the disk
    has room again, the next answered request's line must still be delivered intact."""
    spool = make_spool()
    disk = FullDisk(short_first=True)
    monkeypatch.setattr(spool_module, "os", disk)
    with pytest.raises(SpoolError):
        put(spool, ["refused"])
    disk.full = False
    put(spool, ["answered"])

    batch = spool.next_batch(max_rows=10)
    assert batch is not None, f"the answered line is never offered for delivery (backlog {spool.backlog()})"
    for line in batch[1]:
        try:
            decode(line)
        except ValueError as exc:
            pytest.fail(f"the spool offers an undecodable line ({exc}): {line[:120]!r}...")
    assert ids_of(batch[1]) == ["answered"]


def test_a_line_appended_while_the_writer_reads_is_delivered_once_and_leaves_no_backlog(
    make_spool: MakeSpool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer thread reads a segment without the spool's lock. It may run between a
    request's kernel write and that request's bookkeeping (entry, size); the line must
    then be delivered exactly once, and the backlog must end empty, not with a phantom row."""
    spool = make_spool()
    put(spool, ["first"])  # undelivered, so the writer reads the segment

    delivered: list[str] = []

    class Racing:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def pwrite(self, fd: int, data: bytes, offset: int) -> int:
            written = os.pwrite(fd, data, offset)
            # The writer thread runs here, between the kernel write and the bookkeeping.
            segment = spool.segments[0]
            lines, end, _ = segment.read_lines(max_rows=100)
            delivered.extend(ids_of(lines))
            spool.delivered(segment, end)
            return written

    monkeypatch.setattr(spool_module, "os", Racing())
    monkeypatch.setattr(spool_module, "_map", lambda fd, size: None)  # written, so that the race can be staged
    spool.active = None  # a new segment, not mapped
    put(spool, ["second"])
    monkeypatch.undo()

    delivered += drain(spool)
    assert delivered == ["first", "second"]
    assert spool.backlog() == (0, None), "the backlog reports rows that were delivered"


# -- staged files: a big request's lines, published whole -------------------


def stage(spool: Spool, lines: list[list[str]]) -> spool_module.StagedFile:
    """A staged file holding one line per list of ids (one record per id)."""
    staged = spool.stage()
    for ids in lines:
        at = time.time()
        staged.write(encode([[i] for i in ids], spooled_at=at), rows=len(ids), spooled_at=at)
    return staged


def test_a_staged_file_is_invisible_until_published_then_delivered_whole(make_spool: MakeSpool, tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    owner = make_spool()
    put(owner, ["before"])
    staged = stage(owner, [["a", "b"], ["c"]])
    assert [p.name for p in directory.glob(".*")] == [staged.path.name]
    assert staged.path.name.startswith(".") and staged.path.name.endswith(spool_module.STAGED_SUFFIX)
    assert owner.backlog_rows == 1 and scan(directory)["rows"] == 1
    other = make_spool()
    assert other.adopt_orphans() == 0  # neither the live segment nor the staged file

    staged.publish("12.500")

    assert not staged.path.exists()
    published = [p for p in segment_files(directory) if p.name.endswith(f"-P12.500{SUFFIX}")]
    assert len(published) == 1 and published[0].name.startswith(staged.name)
    assert owner.backlog_rows == 4 and scan(directory)["rows"] == 4
    assert owner.backlog()[0] == 4
    assert [s.pending for s in owner.segments] == [None, "12.500"]
    assert drain(owner, max_rows=2) == ["before", "a", "b", "c"]
    assert owner.backlog_rows == 0
    assert not [n for n in files(directory) if "-P12.500" in n or n.endswith(spool_module.STAGED_SUFFIX)]  # gone
    with pytest.raises(SpoolError, match="already published"):
        staged.write(b"1\t1.0\tx\n", rows=1, spooled_at=1.0)


def test_a_discarded_staged_file_leaves_nothing(make_spool: MakeSpool, tmp_path: Path) -> None:
    owner = make_spool()
    staged = stage(owner, [["a"], ["b"]])
    staged.discard()
    staged.discard()  # twice is harmless
    assert files(tmp_path / "spool") == []
    assert owner.next_batch(max_rows=10) is None and owner.backlog_rows == 0
    with pytest.raises(SpoolError, match="already published or discarded"):
        staged.publish("")


def test_a_pending_value_must_be_a_number_or_nothing(make_spool: MakeSpool) -> None:
    staged = stage(make_spool(), [["a"]])
    for bad in ("1-2", "x", "1.2.3", "../evil", ".", "...", "1.", ".5"):
        with pytest.raises(ValueError, match="a decimal number or nothing"):
            staged.publish(bad)
    staged.publish("")
    assert make_spool().adopt_orphans() == 0


STAGING_CHILD = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("spool_under_test", sys.argv[1])
spool_module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = spool_module
spec.loader.exec_module(spool_module)
s = spool_module.Spool(sys.argv[2])
staged = s.stage()
at = time.time()
staged.write(spool_module.encode([["staged-0"], ["staged-1"]], spooled_at=at), rows=2, spooled_at=at)
if sys.argv[3] == "publish":
    staged.publish("7.250")
print("ready", flush=True)
time.sleep(60)
"""


def run_staging_child(directory: Path, step: str) -> None:
    """A process that stages two rows (and publishes them, or not), then is killed."""
    with ready_child(STAGING_CHILD, spool_module.__file__, str(directory), step) as child:
        kill(child)


def test_a_staged_file_of_a_killed_process_is_never_delivered_and_is_cleaned(
    make_spool: MakeSpool, tmp_path: Path
) -> None:
    """Killed before publishing, so before answering: its rows were never given, and never arrive."""
    directory = tmp_path / "spool"
    run_staging_child(directory, "stage")
    (left,) = directory.glob(f".*{spool_module.STAGED_SUFFIX}")
    adopter = make_spool()
    assert adopter.adopt_orphans() == 0
    assert left.exists(), "a staged file under a minute old may be a live request's: kept"
    assert scan(directory)["rows"] == 0

    old = time.time() - spool_module.STALE_TMP_SECONDS - 5
    os.utime(left, (old, old))
    assert adopter.adopt_orphans() == 0
    assert not left.exists()
    assert drain(adopter) == []


def test_an_old_staged_file_of_a_live_request_is_kept(make_spool: MakeSpool, tmp_path: Path) -> None:
    """A request may stage for longer than a minute: its lock, not its age, says it is alive."""
    owner = make_spool()
    staged = stage(owner, [["slow"]])
    old = time.time() - spool_module.STALE_TMP_SECONDS - 5
    os.utime(staged.path, (old, old))
    assert make_spool().adopt_orphans() == 0
    assert staged.path.exists()
    staged.publish("1.000")
    assert drain(owner) == ["slow"]


def test_a_published_file_of_a_killed_process_is_adopted_with_its_pending_value(
    make_spool: MakeSpool, tmp_path: Path
) -> None:
    directory = tmp_path / "spool"
    run_staging_child(directory, "publish")
    assert scan(directory) == {
        "segments": 1,
        "orphaned": 1,
        "rows": 2,
        "oldest_spooled_at": pytest.approx(time.time(), abs=60),
    }
    adopter = make_spool()
    assert adopter.adopt_orphans() == 1
    assert [s.pending for s in adopter.segments] == ["7.250"]
    assert drain(adopter) == ["staged-0", "staged-1"]
    assert files(directory) == []


def test_a_staged_file_that_cannot_be_created_raises_spool_error(make_spool: MakeSpool, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(SpoolError, match="cannot spool predictions"):
        make_spool(blocker / "spool").stage()


def test_a_full_disk_while_staging_raises_spool_error(make_spool: MakeSpool, monkeypatch: pytest.MonkeyPatch) -> None:
    staged = make_spool().stage()
    monkeypatch.setattr(spool_module, "os", FullDisk())
    with pytest.raises(SpoolError, match="cannot spool predictions"):
        staged.write(b"1\t1.0\tx\n", rows=1, spooled_at=1.0)
    monkeypatch.undo()
    staged.discard()


def test_a_staged_file_is_published_with_fsync(make_spool: MakeSpool, monkeypatch: pytest.MonkeyPatch) -> None:
    flushed: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(spool_module.os, "fsync", lambda fd: flushed.append(fd) or real_fsync(fd))
    owner = make_spool(fsync=True)
    stage(owner, [["a", "b"]]).publish("3.000")
    assert len(flushed) == 2  # the file, then the folder that names it
    assert drain(owner) == ["a", "b"]


def test_a_folder_that_cannot_be_flushed_publishes_nothing(
    make_spool: MakeSpool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With SPOOL_FSYNC the request must not answer lines that might not survive a power cut:
    they are not published, and the request fails."""
    owner = make_spool(fsync=True)
    staged = stage(owner, [["a", "b"]])

    def refuse(directory: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool_module, "_fsync_directory", refuse)
    with pytest.raises(SpoolError, match="cannot spool predictions"):
        staged.publish("3.000")
    staged.discard()
    assert files(tmp_path / "spool") == []
    assert owner.backlog_rows == 0 and owner.next_batch(max_rows=10) is None
    assert make_spool().adopt_orphans() == 0


def refuse_opening(monkeypatch: pytest.MonkeyPatch, refused: Callable[[Path], bool]) -> None:
    """The spool's os.open fails with EACCES for the paths ``refused`` picks, as for a file of another user."""
    real_open = os.open

    def open_or_refuse(path: Any, flags: int, *args: Any) -> int:
        if refused(Path(path)):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(spool_module.os, "open", open_or_refuse)


def test_a_dead_staged_file_that_cannot_be_opened_does_not_stop_adoption(
    make_spool: MakeSpool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "spool"
    run_staging_child(directory, "stage")
    run_staging_child(directory, "publish")
    (left,) = directory.glob(f".*{spool_module.STAGED_SUFFIX}")
    old = time.time() - spool_module.STALE_TMP_SECONDS - 5
    os.utime(left, (old, old))
    refuse_opening(monkeypatch, lambda path: path.name.endswith(spool_module.STAGED_SUFFIX))
    adopter = make_spool()
    with caplog.at_level("WARNING", logger="titanic_web.spool"):
        assert adopter.adopt_orphans() == 1
    assert "cannot remove the dead staged file" in caplog.text
    assert drain(adopter) == ["staged-0", "staged-1"]
    assert left.exists()


def test_an_orphan_that_cannot_be_opened_is_logged_and_the_others_are_delivered(
    make_spool: MakeSpool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "spool"
    run_staging_child(directory, "publish")
    run_staging_child(directory, "publish")
    unreadable, readable = segment_files(directory)
    refuse_opening(monkeypatch, lambda path: path == unreadable)
    adopter = make_spool()
    with caplog.at_level("ERROR", logger="titanic_web.spool"):
        assert adopter.adopt_orphans() == 1
    assert f"cannot open {unreadable}" in caplog.text
    assert drain(adopter) == ["staged-0", "staged-1"]
    assert segment_files(directory) == [unreadable]  # kept for a later adopter

    monkeypatch.undo()
    later = make_spool()
    assert later.adopt_orphans() == 1
    assert drain(later) == ["staged-0", "staged-1"]
    assert segment_files(directory) == []
