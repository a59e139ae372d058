"""A local-disk outbox of answered predictions: append-only segment files, one writer each.

Each process appends to segments it creates and holds an exclusive ``flock`` on
for as long as it lives. The kernel drops those locks when the process dies,
however it dies, so any other process can tell an orphaned segment (lock free)
from a live one (lock held) and deliver it. Delivery progress is kept beside
each segment in a ``.done`` file holding the byte offset delivered so far, so a
replay resends at most the batch that was in flight; the prediction uuid makes
that resend harmless.

A line is one request's rows (or a chunk of them), tab-separated fields of text:
row by row (:func:`encode`), or column by column (:func:`encode_columns`).
Nothing here knows Flask or SQL, or what the fields mean.

A new segment is given its full size on disk at once (``posix_fallocate``) and
mapped into memory; a line is copied into the mapping, from the start: a request
then makes no system call, and its write neither grows the file nor allocates
blocks. The mapped pages are the file's pages in the kernel's page cache, so a line
copied there survives the death of the process as a written one does. The bytes
past the last line are zeros until lines fill them; readers take whole lines only,
so they never see them (:func:`whole_lines`). A line that does not fit in what is left
of a mapping starts a new segment: a mapped file is never written to. With fsync, where
the file system cannot preallocate, or on one that may not keep a preallocated file's
blocks for it (:data:`_MAPPABLE`), lines are written with ``pwrite`` instead.

A request of many rows writes its lines into a staged file of its own, hidden
and locked in the same folder (:class:`StagedFile`), and publishes it whole by
renaming it into a segment: no line is copied, and a staged file whose process
died before publishing it (so before anything was answered) is never delivered.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import mmap
import os
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from titanic_web import jsontext

log = logging.getLogger(__name__)

SUFFIX = ".spool"  # lines of tab-separated text fields (see encode and encode_columns)
DONE_SUFFIX = ".done"
STAGED_SUFFIX = ".staged"  # a request's lines before it publishes them (hidden: a leading dot)
#: A published staged segment's name carries the value its rows' pending field stands for.
_PENDING_VALUE = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?)?")
_PENDING_IN_NAME = re.compile(r"-P(" + _PENDING_VALUE.pattern + ")" + re.escape(SUFFIX) + "$")
#: A temporary file older than this was left by a killed process.
STALE_TMP_SECONDS = 60.0


class SpoolError(OSError):
    """The spool could not keep a record on local disk."""


@dataclass(slots=True)
class Entry:
    """One appended line not yet delivered: where it ends, when, and how many rows; and,
    while few rows wait, the rows' fields as the process that appended the line encoded
    them (:meth:`Spool.append`), so that its writer need not read the line back."""

    end: int
    spooled_at: float
    rows: int
    fields: Sequence[Sequence[str]] | None = None


class Segment:
    """One spool file with its lock held by this process."""

    def __init__(self, path: Path, fd: int, *, done: int = 0, write_fd: int | None = None) -> None:
        self.path = path
        self.fd = fd  # for reading; on adopted segments it also holds the lock
        self.write_fd = write_fd  # own segments: appends go here, and it holds the lock
        self.done = done  # bytes delivered
        self.size = os.fstat(fd).st_size
        self.entries: deque[Entry] = deque()  # undelivered lines, oldest first
        self.sealed = False  # no more appends: delete once delivered
        self.pending = pending_value(path.name)  # a published staged segment's (see StagedFile)
        self.map: mmap.mmap | None = None  # an own preallocated segment's pages, where lines are copied

    def seal(self) -> None:
        """No more appends: the segment is delivered, then deleted."""
        self.sealed = True
        self.unmap()

    def unmap(self) -> None:
        if self.map is not None:
            self.map.close()
            self.map = None

    @property
    def done_path(self) -> Path:
        return self.path.with_name(self.path.name + DONE_SUFFIX)

    def read_lines(self, *, max_rows: int) -> tuple[list[bytes], int, int]:
        """Read whole lines after the delivered offset, about max_rows rows' worth.

        Returns (lines, end offset, rows). A final line without its newline is a
        write cut short by a crash before anything was answered: it is left out.
        """
        lines: list[bytes] = []
        offset = self.done
        rows = 0
        chunk = 1 << 20
        buffer = b""
        position = self.done
        while rows < max_rows and position < self.size:
            # Never past the size this process has accounted for: a line being
            # appended right now is delivered once its entry exists.
            data = os.pread(self.fd, min(chunk, self.size - position), position)
            if not data:
                break
            position += len(data)
            buffer += data
            start = 0
            while rows < max_rows:
                newline = buffer.find(b"\n", start)
                if newline < 0:
                    break
                line = buffer[start : newline + 1]
                start = newline + 1
                offset += len(line)
                lines.append(line)
                rows += line_rows(line)
            buffer = buffer[start:]  # one copy per chunk, not per line
            if rows >= max_rows:
                break
        return lines, offset, rows

    def quarantine(self, line: bytes) -> Path:
        """Keep an undecodable line aside (in <segment>.bad) so it cannot block the rest."""
        bad = self.path.with_name(self.path.name + ".bad")
        with open(bad, "ab") as fh:
            fh.write(line if line.endswith(b"\n") else line + b"\n")
        return bad

    def mark_done(self, offset: int) -> tuple[int, int]:
        """Persist the delivered offset (atomically); drop the delivered lines' entries and
        return their rows, and how many of them were kept in memory."""
        tmp = self.done_path.with_name(self.done_path.name + ".tmp")
        tmp.write_text(str(offset))
        os.replace(tmp, self.done_path)
        self.done = offset
        rows = kept = 0
        while self.entries and self.entries[0].end <= offset:
            entry = self.entries.popleft()
            rows += entry.rows
            if entry.fields is not None:
                kept += entry.rows
        return rows, kept

    def remove(self) -> None:
        """Delete a fully delivered segment and release its lock."""
        done_tmp = self.done_path.with_name(self.done_path.name + ".tmp")  # a kill inside mark_done
        for path in (self.path, self.done_path, done_tmp):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.release()

    def release(self) -> None:
        """Close the descriptors, which releases the lock; the file stays."""
        self.unmap()
        for fd in (self.fd, self.write_fd):
            if fd is not None:
                os.close(fd)
        self.write_fd = None


def line_rows(line: bytes) -> int:
    """How many rows a spooled line holds (its first field), read without parsing the rest."""
    try:
        return int(line[: line.index(b"\t")])
    except ValueError:
        return 1  # unreadable: counted as one row, never a crash


def encode(rows: Sequence[Sequence[str]], *, spooled_at: float) -> bytes:
    """One spool line: the row count, the time, then every row's fields, tab-separated.

    Every row has the same number of fields, and no field holds a tab or a
    newline (JSON text from ``json.dumps`` never does), so a line splits back
    into exactly its rows with no escaping on either side.

    :raise ValueError: rows of different widths, or a field with a tab or newline.
    """
    if len(rows) == 1 and rows[0]:  # one row, the usual request: no list of parts to build
        (row,) = rows
        if "\t" in "".join(row) or "\n" in (text := "\t".join(row)):
            raise ValueError("a spooled field holds a tab or a newline")
        return f"1\t{time_text(spooled_at)}\t{text}\n".encode()
    width = len(rows[0]) if rows else 0
    parts = [str(len(rows)), time_text(spooled_at)]
    for row in rows:
        if len(row) != width:
            raise ValueError(f"spooled rows must have the same width: {len(row)} fields, not {width}")
        parts.extend(row)
    text = "".join(parts)  # a copy of a short line is cheaper than counting its tabs
    if "\t" in text or "\n" in text:
        raise ValueError("a spooled field holds a tab or a newline")
    return ("\t".join(parts) + "\n").encode()


def time_text(spooled_at: float) -> str:
    """A line's time field: seconds to the millisecond, as ``float`` reads them back."""
    return f"{spooled_at:.3f}"


def decode(line: bytes) -> tuple[float, list[list[str]]]:
    """(spooled_at, rows of fields) of one spool line, by row (:func:`encode`) or by column
    (:func:`encode_columns`): the rows are the same either way.

    :raise ValueError: the line is not one that :func:`encode` or :func:`encode_columns` wrote.
    """
    fields = line.rstrip(b"\n").decode().split("\t")
    if len(fields) < 2:
        raise ValueError("a spool line starts with its row count and time")
    count, spooled_at, values = int(fields[0]), float(fields[1]), fields[2:]
    if values[:1] == [BY_COLUMN]:
        # Every row takes bytes of the line (its id, at least): a count past them is damage,
        # and would have the rows' shared fields fill memory.
        if not 0 < count <= len(line):
            raise ValueError(f"a line by column of {len(line)} bytes cannot hold {count} rows")
        try:
            return spooled_at, _rows_of_columns(count, values[1:])
        except RecursionError:  # JSON nested past the interpreter's limit: damage too
            raise ValueError("a spooled column nests too deeply") from None
    if count == 0:
        if values:
            raise ValueError(f"{len(values)} field(s) on a line of 0 rows")
        return spooled_at, []
    width, extra = divmod(len(values), count)
    if extra or not width:
        raise ValueError(f"{len(values)} field(s) cannot be {count} rows")
    return spooled_at, [values[start : start + width] for start in range(0, len(values), width)]


def line_time(line: bytes) -> float:
    """When a line was spooled (its second field), read without decoding its rows.

    :raise ValueError: the line does not start with a row count and a time.
    """
    head = line.split(b"\t", 2)
    if len(head) < 2:
        raise ValueError("a spool line starts with its row count and time")
    return float(head[1])


# -- lines by column ----------------------------------------------------------------------
#
# A request of many rows repeats most fields (model version, source, time) and holds its
# numbers as numbers: a line by column keeps each field once for all rows, the numbers as
# bytes, and leaves the JSON text of each row to be written when the line is read (by
# the writer, after the answer). Each column is one tab-free field, its first character
# saying how it is kept; every function below returns one.

#: The third field of a line by column; a line by row has its first row's first field there.
BY_COLUMN = "by-column/1"
#: Between the parts of a column (JSON text escapes it, base64 and hex never hold it).
_UNIT = "\x1f"
#: Between the columns of a column of pieces (JSON text escapes it too).
_RECORD = "\x1e"
_WHOLE_OR_NONE = frozenset((int, type(None)))


def encode_columns(count: int, columns: Sequence[str], *, spooled_at: float) -> bytes:
    """One spool line of ``count`` rows given by column: each of ``columns`` is one field of
    every row, made by :func:`same`, :func:`fixed`, :func:`ints`, :func:`floats`,
    :func:`pieces` or :func:`objects`. :func:`decode` gives the rows back as :func:`encode`
    would have kept them.

    :raise ValueError: a column holds a tab or a newline.
    """
    if any("\t" in column or "\n" in column for column in columns):  # each searched, none copied
        raise ValueError("a spooled column holds a tab or a newline")
    return ("\t".join([str(count), time_text(spooled_at), BY_COLUMN, *columns]) + "\n").encode()


def same(text: str) -> str:
    """A column whose field is the same text in every row."""
    return "=" + text


def fixed(values: Sequence[str], *, width: int) -> str:
    """A column of texts of one width (prediction ids: 32 hex digits), kept end to end.

    :raise ValueError: a text of another width.
    """
    joined = "".join(values)
    if len(joined) != width * len(values) or any(len(value) != width for value in values):
        raise ValueError(f"every text of a fixed column must have {width} characters")
    return f"w{width}:{joined}"


def ints(values: Sequence[int | None]) -> str:
    """A column of whole numbers or None (read back as an empty field).

    :raise ValueError: a value is neither (True, say, which would come back as 1).
    """
    if not set(map(type, values)) <= _WHOLE_OR_NONE:  # type(), not isinstance: True is no number here
        raise ValueError("a column of whole numbers holds something else")
    return "i" + json.dumps(list(values), separators=(",", ":"))


def floats(values: Any) -> str:
    """A column of floats, kept exactly (as 8-byte numbers), written back by ``repr``."""
    return "f" + _float_bytes(values)


def pieces(columns: Sequence[Sequence[str]]) -> str:
    """A column of JSON objects given as columns of pieces: a row's object is ``"{" +
    ",".join(its piece in each column) + "}"`` (:class:`titanic_web.schema.CheckedRows`).
    The pieces are JSON text, so they hold no unit or record separator.

    :raise ValueError: one does, or the columns differ in length.
    """
    count = len(columns[0]) if columns else 0
    joined = [_UNIT.join(column) for column in columns]
    if not columns or any(len(column) != count for column in columns):
        raise ValueError("a column of pieces needs columns of one length")
    if any(text.count(_UNIT) != count - 1 for text in joined) or any(_RECORD in text for text in joined):
        raise ValueError("a spooled piece holds a unit or record separator")
    return "p" + _RECORD.join(joined)


def objects(
    number_names: Sequence[str],
    numbers: Sequence[Sequence[float]],
    text_names: Sequence[str],
    text_values: Sequence[Sequence[str]],
) -> str:
    """A column of JSON objects (:func:`titanic_web.jsontext.objects`), kept as their columns:
    the numbers as bytes, the texts as JSON arrays.

    :raise ValueError: the names and columns do not match, the columns differ in length, or
        a text is not a string (what :func:`decode` would refuse to read back).
    """
    columns = [*numbers, *text_values]
    if len(number_names) != len(numbers) or len(text_names) != len(text_values) or not columns:
        raise ValueError(f"{len(number_names) + len(text_names)} names for {len(columns)} columns")
    if any(len(column) != len(columns[0]) for column in columns):
        raise ValueError("the columns of a column of objects must have one length")
    if not all(set(map(type, column)) <= {str} for column in [[*number_names, *text_names], *text_values]):
        raise ValueError("the names and texts of a column of objects must be strings")
    names = json.dumps([list(number_names), list(text_names)], separators=(",", ":"))
    values = json.dumps([list(column) for column in text_values], separators=(",", ":"))
    return "o" + _UNIT.join((names, _float_bytes(numbers), values))


def _float_bytes(values: Any) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f8").tobytes()).decode("ascii")


def _floats_of(text: str, count: int) -> np.ndarray:
    numbers = np.frombuffer(base64.b64decode(text, validate=True), dtype="<f8")
    if numbers.size != count:
        raise ValueError(f"{numbers.size} numbers where {count} were expected")
    return numbers


def _rows_of_columns(count: int, columns: list[str]) -> list[list[str]]:
    """The rows (lists of text fields) of a line by column, as :func:`encode` keeps them."""
    if count <= 0 or not columns:
        raise ValueError(f"a line by column holds {count} rows in {len(columns)} columns")
    fields: list[Any] = []
    for column in columns:
        kind, body = column[:1], column[1:]
        if kind == "=":
            fields.append([body] * count)
        elif kind == "w":
            width_text, _, joined = body.partition(":")
            width = int(width_text)
            if width <= 0 or len(joined) != width * count:
                raise ValueError(f"a fixed column of {count} texts of {width} characters has {len(joined)}")
            fields.append([joined[start : start + width] for start in range(0, len(joined), width)])
        elif kind == "i":
            values = json.loads(body)
            if not isinstance(values, list) or len(values) != count:
                raise ValueError(f"a column of whole numbers must hold {count} of them")
            if not set(map(type, values)) <= _WHOLE_OR_NONE:  # type(), not isinstance: True is no number here
                raise ValueError("a column of whole numbers holds something else")
            fields.append(["" if value is None else str(value) for value in values])
        elif kind == "f":
            fields.append(list(map(float.__repr__, _floats_of(body, count).tolist())))
        elif kind == "o":
            fields.append(_objects_of(body, count))
        elif kind == "p":
            columns_of_pieces = [text.split(_UNIT) for text in body.split(_RECORD)]
            if any(len(column) != count for column in columns_of_pieces):
                raise ValueError(f"a column of pieces must hold {count} in each of its columns")
            fields.append(jsontext.join_pieces(columns_of_pieces))
        else:
            raise ValueError(f"unknown spooled column kind {kind!r}")
    return list(map(list, zip(*fields, strict=True)))


def _objects_of(body: str, count: int) -> list[str]:
    names_text, numbers_text, texts_text = body.split(_UNIT)
    names = json.loads(names_text)
    text_values = json.loads(texts_text)
    if not (
        isinstance(names, list)
        and len(names) == 2
        and all(isinstance(group, list) and all(isinstance(n, str) for n in group) for group in names)
        and isinstance(text_values, list)
        and len(text_values) == len(names[1])
        and all(isinstance(c, list) and len(c) == count and set(map(type, c)) <= {str} for c in text_values)
    ):
        raise ValueError("a column of objects has bad names or texts")
    number_names, text_names = names
    numbers = _floats_of(numbers_text, len(number_names) * count).reshape(len(number_names), count)
    return jsontext.objects(number_names, numbers.tolist(), text_names, text_values)


def _read_done(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


class Spool:
    """The outbox folder as seen by one process: its own segments, and orphans it adopts."""

    def __init__(self, directory: Path, *, segment_bytes: int = 8 << 20, fsync: bool = False) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.lock = threading.RLock()  # re-entrant: the delivery side may run inside an append (tests force it)
        self.pid = os.getpid()
        self.segments: list[Segment] = []  # delivery order: adopted orphans, then own, oldest first
        self.active: Segment | None = None
        self.backlog_rows = 0  # rows waiting, kept as a counter: read on every request
        self.kept_rows = 0  # rows waiting whose fields are kept in memory too (at most KEPT_ROWS)
        self._file_system: str | None = None  # the spool folder's, once a segment is made

    #: Rows whose fields are kept in memory beside their lines, at most: a bound on memory
    #: (about a kilobyte a row) while the database is slow or down and the backlog grows.
    KEPT_ROWS = 20_000

    # -- the request side -------------------------------------------------
    def append(
        self, line: bytes, *, rows: int, spooled_at: float, fields: Sequence[Sequence[str]] | None = None
    ) -> None:
        """Write one line to local disk before the request answers.

        ``fields`` are the line's rows as :func:`encode` was given them: kept in memory
        (within KEPT_ROWS), :meth:`next_kept` hands them to this process's writer, which
        then need not read the line back and decode it.

        :raise SpoolError: the disk refused it; the caller must not answer success.
        """
        with self.lock:
            try:
                segment = self._active_segment()
                if segment.map is not None and segment.size + len(line) > len(segment.map):
                    # A mapped segment is never written to: past its mapping are blocks the disk
                    # may not have. The line starts a new segment; this one is full.
                    if segment.size:
                        segment.seal()
                        self.active = None
                        segment = self._active_segment()
                    if segment.map is not None and len(line) > len(segment.map):
                        segment.unmap()  # longer than a whole segment: written, alone in its segment
                assert segment.write_fd is not None
                if segment.map is not None:
                    _copy(segment.map, segment.size, line)
                else:
                    _write_all(segment.write_fd, line, segment.size)
                if self.fsync:
                    os.fsync(segment.write_fd)
            except OSError as exc:
                self._discard_partial_line()
                raise _refused(exc, self.directory) from exc
            segment.size += len(line)
            if fields is not None and self.kept_rows + rows <= self.KEPT_ROWS:
                self.kept_rows += rows
            else:
                fields = None
            segment.entries.append(Entry(segment.size, spooled_at, rows, fields))
            self.backlog_rows += rows
            if segment.size >= self.segment_bytes:
                segment.seal()
                self.active = None

    def _discard_partial_line(self) -> None:
        """After a failed append, cut the file back to its last whole line.

        A short write followed by an error (a full disk) would otherwise leave half
        a line that the next line would be glued to. If the cut fails too, the
        segment is sealed and the next append starts a new one.
        """
        segment = self.active
        if segment is None or segment.write_fd is None:
            return
        if segment.map is not None:  # cut under its mapping, lines copied past the cut would be lost
            segment.seal()
            self.active = None
            return
        try:
            os.ftruncate(segment.write_fd, segment.size)
        except OSError:
            segment.seal()
            self.active = None

    def stage(self) -> StagedFile:
        """A new staged file in this folder, locked by this process (see :class:`StagedFile`).

        :raise SpoolError: the folder refused it.
        """
        return StagedFile(self)

    def _publish(self, staged: StagedFile, fd: int, pending: str) -> None:
        """Rename a staged file into a sealed segment of this process, queued for delivery.

        With fsync, the file and then the folder are flushed first; if the folder cannot be,
        the renamed file is deleted again and nothing is published.
        """
        path = self.directory / f"{staged.name}-P{pending}{SUFFIX}"
        read_fd = os.open(staged.path, os.O_RDONLY)
        try:
            if self.fsync:
                os.fsync(fd)
            os.rename(staged.path, path)
            if self.fsync:
                try:
                    _fsync_directory(self.directory)
                except OSError:
                    path.unlink()  # not kept for sure, so not published: the request fails
                    raise
        except OSError:
            os.close(read_fd)
            raise
        staged.fd = None  # the segment's now: it keeps the lock until the segment is delivered
        segment = Segment(path, read_fd, write_fd=fd)
        segment.sealed = True
        segment.entries.extend(staged.entries)
        with self.lock:
            self._forget_if_forked()
            self.segments.append(segment)
            self.backlog_rows += staged.rows

    def _forget_if_forked(self) -> None:
        if self.pid != os.getpid():  # forked: the parent's segments are not ours
            self.pid = os.getpid()
            self.segments, self.active, self.backlog_rows, self.kept_rows = [], None, 0, 0

    def _mappable(self) -> bool:
        """Whether this folder's file system keeps a preallocated file's blocks for it (see _MAPPABLE)."""
        if self._file_system is None:
            self._file_system = file_system(self.directory) or "unknown"
        return self._file_system in _MAPPABLE

    def _active_segment(self) -> Segment:
        if self.active is not None and self.pid == os.getpid():
            return self.active
        self._forget_if_forked()
        self.directory.mkdir(parents=True, exist_ok=True)
        mappable = self._mappable()
        name = _new_name()
        # Create under a hidden name, lock, then rename: no other process can ever
        # see this segment unlocked and take it for an orphan.
        tmp = self.directory / f".{name}.tmp"
        # Written at offsets, not appended (O_APPEND would write past the preallocation);
        # open for reading too, which a shared writable mapping needs.
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        path = self.directory / f"{name}{SUFFIX}"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            preallocated = _preallocate(fd, self.segment_bytes)
            os.rename(tmp, path)
            read_fd = os.open(path, os.O_RDONLY)  # reads go through pread on a descriptor of their own
        except OSError:
            os.close(fd)  # a file renamed already holds no line: an adopter deletes it
            raise
        segment = Segment(path, read_fd, write_fd=fd)
        segment.size = 0  # the lines written so far; the rest of the file is zeros
        if preallocated and not self.fsync and mappable:  # with fsync, each line is written and flushed
            segment.map = _map(fd, self.segment_bytes)
        self.active = segment
        self.segments.append(segment)
        return segment

    # -- the delivery side ------------------------------------------------
    def adopt_orphans(self) -> int:
        """Lock and queue every segment whose owner is gone; return how many."""
        adopted = 0
        if not self.directory.is_dir():
            return 0
        with self.lock:
            mine = {s.path for s in self.segments}
            for path in sorted(self.directory.glob(f"*{SUFFIX}")):
                if path in mine:
                    continue
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    continue  # delivered and removed meanwhile
                except OSError as exc:  # one unreadable file must not stop the delivery of the rest
                    log.error("spool: cannot open %s to deliver it: %s", path, exc)
                    continue
                try:
                    if not _try_lock(fd) or os.fstat(fd).st_nlink == 0:
                        os.close(fd)  # a live process owns it, or it was removed after we opened it
                        continue
                    segment = Segment(path, fd, done=_read_done(path.with_name(path.name + DONE_SUFFIX)))
                    segment.sealed = True
                    _index_entries(segment)
                except OSError as exc:
                    os.close(fd)
                    log.error("spool: cannot adopt %s: %s", path, exc)
                    continue
                self.backlog_rows += sum(e.rows for e in segment.entries)
                self.segments.insert(adopted, segment)
                adopted += 1
            self._remove_stale_tmp()
        self._remove_dead_staged()  # outside the lock: requests append meanwhile
        return adopted

    def probe(self) -> None:
        """Check that this folder takes a line now, as a request's would be written: a new file
        with a block in it, deleted again (named as a temporary file, so that one left by a
        crash is removed like any other).

        :raise SpoolError: the folder or the disk refused it.
        """
        tmp = self.directory / f".{_new_name()}.probe.tmp"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _write_all(fd, bytes(PROBE_BYTES), 0)
            finally:
                os.close(fd)
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            raise _refused(exc, self.directory) from exc

    def _remove_stale_tmp(self) -> None:
        """Delete temporary files a killed process left: only old ones, so a file
        another process is creating right now is never touched."""
        cutoff = time.time() - STALE_TMP_SECONDS
        for tmp in [*self.directory.glob(".*.tmp"), *self.directory.glob(f"*{DONE_SUFFIX}.tmp")]:
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
            except FileNotFoundError:
                continue

    def _remove_dead_staged(self) -> None:
        """Delete staged files whose process died before publishing them (so before answering).

        A staged file is written for as long as its request runs, however long: deleted only
        when its lock is free too. A file that cannot be opened, locked or deleted is left
        alone (and logged): it must not stop the delivery of everything else.
        """
        cutoff = time.time() - STALE_TMP_SECONDS
        for staged in self.directory.glob(f".*{STAGED_SUFFIX}"):
            try:
                if staged.stat().st_mtime >= cutoff:
                    continue
                fd = os.open(staged, os.O_RDONLY)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its request is still running
                finally:
                    os.close(fd)
                staged.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("spool: cannot remove the dead staged file %s: %s", staged, exc)

    def next_batch(self, *, max_rows: int) -> tuple[Segment, list[bytes], int] | None:
        """The oldest undelivered lines of one segment: (segment, lines, end offset)."""
        with self.lock:
            segments = list(self.segments)
        for segment in segments:
            if segment.done < segment.size:
                lines, end, _ = segment.read_lines(max_rows=max_rows)
                if lines:
                    return segment, lines, end
            if segment.sealed and segment.done >= segment.size:
                self._retire(segment)
        return None

    def next_kept(self, *, max_rows: int) -> tuple[Segment, list[Sequence[str]], int] | None:
        """The oldest undelivered lines as the rows kept in memory when they were appended:
        (segment, rows, end offset), about max_rows rows; None when the oldest undelivered
        line's rows were not kept (a segment adopted or published, or past KEPT_ROWS): read
        it with :meth:`next_batch`."""
        with self.lock:
            for segment in self.segments:
                if segment.done >= segment.size:
                    continue
                rows: list[Sequence[str]] = []
                end = segment.done
                for entry in segment.entries:  # the first one's line starts at segment.done
                    if entry.fields is None or len(rows) >= max_rows:
                        break
                    rows.extend(entry.fields)
                    end = entry.end
                return (segment, rows, end) if rows else None
        return None

    def delivered(self, segment: Segment, end: int) -> None:
        """Record that a segment's lines up to end are in the database."""
        rows, kept = segment.mark_done(end)
        with self.lock:
            self.backlog_rows -= rows
            self.kept_rows -= kept
        if segment.sealed and end >= segment.size:
            self._retire(segment)

    def _retire(self, segment: Segment) -> None:
        with self.lock:
            if segment in self.segments:
                self.segments.remove(segment)
            else:
                return
        segment.remove()

    def backlog(self) -> tuple[int, float | None]:
        """(rows waiting, time the oldest was spooled) across this process's segments.

        The rows are the counter kept as lines come and go, and the oldest time is each
        segment's first line's: a status read costs the same with a minute's backlog or a day's.
        """
        oldest: float | None = None
        with self.lock:
            for segment in self.segments:
                try:  # the writer drops delivered entries without this lock
                    first = segment.entries[0].spooled_at
                except IndexError:
                    continue
                oldest = first if oldest is None else min(oldest, first)
            return self.backlog_rows, oldest

    def close(self) -> None:
        """Release this process's segments (their undelivered lines stay on disk)."""
        with self.lock:
            segments, self.segments, self.active = self.segments, [], None
            self.backlog_rows = self.kept_rows = 0  # no longer this process's: an adopter counts them
        for segment in segments:
            if segment.done >= segment.size:
                segment.remove()
            else:
                segment.release()


class StagedFile:
    """One request's spool lines, written before it may answer and published whole.

    The file is created hidden (``.<name>.staged``) and locked in the spool folder,
    so no other process takes it for a segment or an orphan. :meth:`publish`
    renames it into a sealed segment of this process, which its writer delivers
    like any other; its name carries the text that the rows' pending field (a
    value known only once every row is written, the request's latency) stands
    for, so publishing writes nothing into the file. :meth:`discard` deletes it.
    A staged file left by a killed process is never delivered: the next adopter
    deletes it once it is a minute old and unlocked.
    """

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.name = _new_name()
        self.path = spool.directory / f".{self.name}{STAGED_SUFFIX}"
        try:
            spool.directory.mkdir(parents=True, exist_ok=True)
            self.fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise _refused(exc, spool.directory) from exc
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self.discard()
            raise SpoolError(exc.errno, f"cannot lock a staged file in {spool.directory}: {exc.strerror}") from exc
        self.size = 0
        self.rows = 0
        self.entries: list[Entry] = []

    def write(self, line: bytes, *, rows: int, spooled_at: float) -> None:
        """Add one line (as :func:`encode` writes it).

        :raise SpoolError: the disk refused it.
        """
        if self.fd is None:
            raise SpoolError(f"the staged file {self.path.name} is already published or discarded")
        try:
            _write_all(self.fd, line, self.size)
        except OSError as exc:
            raise _refused(exc, self.spool.directory) from exc
        self.size += len(line)
        self.rows += rows
        self.entries.append(Entry(end=self.size, spooled_at=spooled_at, rows=rows))

    def publish(self, pending: str = "") -> None:
        """Make every line a sealed segment of this process, to be delivered; ``pending`` is
        what the rows' pending field stands for (digits and a point, or empty for none).

        :raise SpoolError: the rename (or, with fsync, flushing the file or the folder) failed;
            nothing was published.
        """
        if self.fd is None:
            raise SpoolError(f"the staged file {self.path.name} is already published or discarded")
        if not _PENDING_VALUE.fullmatch(pending):
            raise ValueError(f"a pending value in a segment name is a decimal number or nothing, not {pending!r}")
        try:
            self.spool._publish(self, self.fd, pending)
        except OSError as exc:
            raise _refused(exc, self.spool.directory) from exc

    def discard(self) -> None:
        """Delete the staged lines (nothing of them was published)."""
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None


#: What :meth:`Spool.probe` writes: a block, about what a request of a few passengers spools.
PROBE_BYTES = 4096


def _new_name() -> str:
    """A segment's or staged file's name: unique to this machine, process and moment."""
    return f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}-{uuid.uuid4().hex[:8]}"


def _write_all(fd: int, data: bytes, offset: int) -> None:
    written = os.pwrite(fd, data, offset)
    while written < len(data):  # rare short write: finish it
        written += os.pwrite(fd, data[written:], offset + written)


def _preallocate(fd: int, size: int) -> bool:
    """Give a new segment its blocks and its size now, so that appends write in place;
    True if done.

    Where the file system cannot (or the disk has not the room for a whole segment),
    lines are written past the end as they come, as into any file: the disk is then
    asked for room by each line, which fails that line's request if there is none.
    """
    allocate = getattr(os, "posix_fallocate", None)  # not on every system (macOS)
    if allocate is None:
        return False
    try:
        allocate(fd, 0, size)
    except OSError as exc:
        log.debug("spool: segment not preallocated (%s); lines grow the file instead", exc.strerror)
        os.ftruncate(fd, 0)  # nothing half-allocated left behind: readers expect lines or nothing
        return False
    return True


#: File systems on which the blocks that ``posix_fallocate`` gives a file stay its own, so that
#: a store into the file's mapping never needs room the disk may not have. Copy-on-write ones
#: (btrfs, ZFS) allocate anew on every write, where a full disk would end the process (SIGBUS)
#: instead of failing its request; there, and on any file system not named here, lines are written.
_MAPPABLE = frozenset({"ext4", "xfs", "tmpfs"})


def file_system(path: Path) -> str | None:
    """The type of the file system that holds path (which exists), as ``/proc/self/mountinfo``
    names it; None where that cannot be told (not Linux, or no mount of path's device there)."""
    try:
        device = os.stat(path).st_dev
        mountinfo = os.fsdecode(Path("/proc/self/mountinfo").read_bytes())
    except OSError:
        return None
    return mount_type(mountinfo, f"{os.major(device)}:{os.minor(device)}")


def mount_type(mountinfo: str, device: str) -> str | None:
    """The type of the last mount of device (``major:minor``) in the text of a mountinfo file.

    A line reads ``36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext4 /dev/root rw``:
    the device third, then optional fields up to ``-``, then the type. Matching the device, not
    the mount point, sees through mounts made over others and bind mounts alike.
    """
    kind = None
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) > 7 and fields[2] == device and "-" in fields[6:-1]:
            kind = fields[fields.index("-", 6) + 1] or None
    return kind


def _copy(mapped: mmap.mmap, offset: int, line: bytes) -> None:
    """Copy a line into a mapped segment, its newline last: a process killed during the copy
    leaves a line without its newline, which no reader takes."""
    end = offset + len(line) - 1
    mapped[offset:end] = memoryview(line)[:-1]
    mapped[end] = line[-1]


def _map(fd: int, size: int) -> mmap.mmap | None:
    """A preallocated segment's pages, shared with the file, for lines to be copied into.

    Only a preallocated file is mapped: its blocks are on disk already, so a copy never
    needs room the disk may not have (which would kill the process with SIGBUS rather
    than fail its request). None if it cannot be mapped: lines are then written.
    """
    try:
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError) as exc:
        log.debug("spool: segment not mapped (%s); lines are written instead", exc)
        return None


def whole_lines(data: bytes) -> bytes:
    """A segment file's bytes up to the end of its last whole line: the zeros of a
    preallocated segment not yet written, or a line cut short by a crash, left out."""
    return data[: data.rfind(b"\n") + 1]


def _refused(exc: OSError, directory: Path) -> SpoolError:
    return SpoolError(exc.errno, f"cannot spool predictions to {directory}: {exc.strerror}")


def pending_value(name: str) -> str | None:
    """What the pending field of a published staged segment's rows stands for, from its file
    name (None: not such a segment)."""
    found = _PENDING_IN_NAME.search(name)
    return None if found is None else found.group(1)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock of an orphan candidate.

    A live owner holds its lock for good; `scan` (the status command) takes a
    shared one for an instant, so a few short retries tell the two apart.
    """
    for attempt in range(5):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt < 4:
                time.sleep(0.01)
    return False


def _index_entries(segment: Segment) -> None:
    """Rebuild the undelivered entries of an adopted segment from its lines."""
    position = segment.done
    for line in _iter_lines(segment.fd, segment.done):
        position += len(line)
        try:
            spooled_at = line_time(line)
        except ValueError:
            spooled_at = time.time()
        segment.entries.append(Entry(end=position, spooled_at=spooled_at, rows=line_rows(line)))
    segment.size = position  # a torn last line (no newline) is never delivered


def _iter_lines(fd: int, start: int) -> Iterator[bytes]:
    """The whole lines of a segment file from start: up to the zeros of a preallocated
    segment, or to a last line cut short."""
    position = start
    buffer = b""
    while True:
        data = os.pread(fd, 1 << 20, position)
        if not data:
            return
        position += len(data)
        buffer += data
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield line + b"\n"
        if buffer and not buffer.strip(b"\0"):
            return  # the unwritten rest of a preallocated segment: no line follows zeros


def scan(directory: Path) -> dict[str, Any]:
    """What the spool folder holds, for `recorder status`: segments, rows waiting, oldest."""
    segments = 0
    rows = 0
    oldest: float | None = None
    orphaned = 0
    if directory.is_dir():
        for path in sorted(directory.glob(f"*{SUFFIX}")):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    orphan = True
                    fcntl.flock(fd, fcntl.LOCK_UN)
                except BlockingIOError:
                    orphan = False
                done = _read_done(path.with_name(path.name + DONE_SUFFIX))
                waiting = 0
                for line in _iter_lines(fd, done):
                    if waiting == 0:  # the segment's oldest undelivered line
                        try:
                            t = line_time(line)
                            oldest = t if oldest is None else min(oldest, t)
                        except ValueError:
                            pass
                    waiting += line_rows(line)
                if waiting or orphan:
                    segments += 1
                    orphaned += int(orphan)
                rows += waiting
            finally:
                os.close(fd)
    return {"segments": segments, "orphaned": orphaned, "rows": rows, "oldest_spooled_at": oldest}
