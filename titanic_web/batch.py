"""Many passengers in one request, in flat memory: read, check, predict and record in chunks.

Every ``/api/predict`` body and every batch upload goes through :func:`process`.
The body (a JSON object, a JSON array, or a CSV file in the competition's
test.csv layout) is read as a stream, ``chunk_rows`` passengers at a time. Each
chunk is checked (:class:`~titanic_web.schema.BatchChecker`), predicted in one
call, its records staged on local disk (:class:`~titanic_web.recorder.Staged`)
and its answers written to a temporary file, so memory holds one chunk whatever
the size of the body.

Nothing reaches the spool until every row has passed: a body with any invalid
passenger stores nothing, and its errors name the CSV line (or the array
index). Once a row has failed, later rows are only checked, not predicted, so
that all errors (up to ``max_errors``) are reported in one answer.

Nothing here reads Flask's request: the caller hands in a binary stream.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, TypeVar

from titanic_web import csvio, features, requestlog, schema
from titanic_web.ids import new_ids
from titanic_web.predictor import Predictor
from titanic_web.recorder import PENDING_LATENCY, Recorder, Staged, spool_columns, spool_rows
from titanic_web.schema import FieldError, InputError

P = TypeVar("P")
R = TypeVar("R")

#: Passengers predicted and staged at a time.
CHUNK_ROWS = 2000
#: Chunks of at least this many passengers are spooled by column (recorder.spool_columns): the
#: JSON text of their features is then written after the answer, by the writer.
COLUMN_LINE_ROWS = 8
#: Bytes of body read at a time.
READ_BYTES = 1 << 20


class BodyError(ValueError):
    """The body cannot be read as passengers: malformed, not UTF-8, empty (400) or too many (413)."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


class BatchInputError(InputError):
    """Some passengers are invalid; nothing was stored. ``total`` counts every error found."""

    def __init__(self, errors: list[FieldError], total: int) -> None:
        super().__init__(errors)
        self.total = total


@dataclass
class Summary:
    """What a processed body came to."""

    model_version: str
    rows: int = 0
    survived: int = 0
    seconds: float = 0.0
    chunks: int = 0

    @property
    def survival_rate(self) -> float:
        return self.survived / self.rows if self.rows else 0.0


@dataclass
class Progress:
    """Yielded after each chunk: rows read so far, and the errors found in them (0: all passed)."""

    rows: int
    errors: int = 0


# -- reading bodies -----------------------------------------------------------------------


def json_items(stream: IO[bytes]) -> Iterator[Any]:
    """The passengers of a JSON body, one at a time: an object, or each item of an array.

    An array is decoded item by item, so its size never sits in memory at once.

    :raise BodyError: not UTF-8, malformed, or neither an object nor an array.
    """
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    scan = json.JSONDecoder().raw_decode
    buffer = ""
    base = 0  # characters dropped from the front of the buffer
    at_end = False

    def more() -> bool:
        nonlocal buffer, at_end
        if at_end:
            return False
        data = stream.read(READ_BYTES)
        try:
            buffer += decoder.decode(data, final=not data)
        except UnicodeDecodeError:
            raise BodyError("malformed JSON: the body must be UTF-8 text") from None
        at_end = not data
        return True

    def skip_space(position: int) -> int:
        while True:
            while position < len(buffer) and buffer[position] in " \t\r\n":
                position += 1
            if position < len(buffer) or not more():
                return position

    def malformed(message: str, position: int) -> BodyError:
        return BodyError(f"malformed JSON: {message} (char {base + position})")

    def too_long() -> BodyError:
        # The json module reads whole numbers with int(), which refuses more digits than this.
        return BodyError(f"malformed JSON: a whole number of more than {sys.get_int_max_str_digits()} digits")

    def too_deep() -> BodyError:
        # The json module reads arrays and objects by recursion, as deep as the interpreter allows.
        return BodyError("malformed JSON: arrays or objects nested too deeply")

    position = skip_space(0)
    if position >= len(buffer):
        raise BodyError("malformed JSON: the body is empty")
    if buffer[position] != "[":
        while more():  # one value: read it whole (a body is at most MAX_CONTENT_LENGTH)
            pass
        try:
            value, end = scan(buffer, position)
        except json.JSONDecodeError as exc:
            raise malformed(exc.msg, exc.pos) from None
        except ValueError:
            raise too_long() from None
        except RecursionError:
            raise too_deep() from None
        if skip_space(end) < len(buffer):
            raise malformed("Extra data", skip_space(end))
        if not isinstance(value, dict):
            raise BodyError("the body must be one passenger (a JSON object) or an array of them")
        yield value
        return

    position = skip_space(position + 1)
    if position < len(buffer) and buffer[position] == "]":
        if skip_space(position + 1) < len(buffer):
            raise malformed("Extra data", skip_space(position + 1))
        return
    while True:
        while True:
            try:
                value, end = scan(buffer, position)
            except json.JSONDecodeError as exc:
                if more():  # the item may go on in the next read
                    continue
                raise malformed(exc.msg, exc.pos) from None
            except ValueError:
                raise too_long() from None
            except RecursionError:
                raise too_deep() from None
            if at_end or (end < len(buffer) and not (buffer[end] in ".eE" and value.__class__ in (int, float))):
                break
            # A number at the very end of a read may go on, and one cut at its '.' or
            # exponent ("1." | "5", "1e" | "3") parses as a shorter number: read on.
            if not more():
                break
        yield value
        position = skip_space(end)
        if position >= len(buffer):
            raise malformed("Expecting ',' delimiter", position)
        if buffer[position] == "]":
            if skip_space(position + 1) < len(buffer):
                raise malformed("Extra data", skip_space(position + 1))
            return
        if buffer[position] != ",":
            raise malformed("Expecting ',' delimiter", position)
        position = skip_space(position + 1)
        if position > READ_BYTES:  # drop what is done with, keep the buffer short
            base += position
            buffer = buffer[position:]
            position = 0


def csv_rows(
    stream: IO[bytes], *, block_rows: int = CHUNK_ROWS
) -> tuple[list[str], Iterator[tuple[Sequence[int], list[list[str]]]]]:
    """The header and the rows of a competition-layout CSV body, in blocks of at most
    ``block_rows``: (each row's line number, the rows' cells). Empty lines are left out.

    The header is checked at once: unknown or missing required columns raise.

    :raise BodyError: not UTF-8, no header, or a line the csv module cannot read.
    :raise InputError: the header's problems, on line 1.
    """
    begin = stream.tell() if stream.seekable() else None  # where to read again from, for a byte not UTF-8
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    # Strict: a quote left open is an error, not a cell that takes in every line after it.
    reader = csv.reader(text, strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise BodyError(f"the CSV file is empty: expected a header line such as {csvio.EXAMPLE_HEADER}") from None
    except UnicodeDecodeError as exc:
        raise _not_utf8(stream, begin, exc, lines_read=reader.line_num) from None
    except csv.Error as exc:
        raise BodyError(csvio.reader_error(exc, start=1, end=reader.line_num)) from None
    csvio.check_header(header)

    def blocks() -> Iterator[tuple[Sequence[int], list[list[str]]]]:
        first = reader.line_num
        block: list[list[str]] = []
        try:
            while True:
                first = reader.line_num
                block = []
                block.extend(itertools.islice(reader, block_rows))  # on an error, keeps the rows before it
                if not block:
                    return
                # Reading the line number after every row costs a tenth of the reading: when the
                # block took one line per row, as it nearly always does, the numbers follow.
                lines: Sequence[int]
                if reader.line_num - first == len(block):
                    lines = range(first + 1, reader.line_num + 1)
                else:  # a quoted cell went over lines
                    lines = _end_lines(first, block)
                if [] in block:  # empty lines are not passengers
                    kept = [position for position, cells in enumerate(block) if cells]
                    lines = [lines[position] for position in kept]
                    block = [block[position] for position in kept]
                if block:
                    yield lines, block
        except UnicodeDecodeError as exc:
            raise _not_utf8(stream, begin, exc, lines_read=reader.line_num) from None
        except csv.Error as exc:  # the failing row begins after the last row read
            start = (_end_lines(first, block)[-1] if block else first) + 1
            raise BodyError(csvio.reader_error(exc, start=start, end=reader.line_num)) from None

    return header, blocks()


def _not_utf8(stream: IO[bytes], begin: int | None, exc: UnicodeDecodeError, *, lines_read: int) -> BodyError:
    """The error for a byte of the body that is not UTF-8, naming its line and offset.

    The text decoder reads a chunk (8 KB) ahead of the csv reader, so the line the reader is
    on is not the byte's. The decoder failed in the data it was given last (that chunk, after
    any bytes of a character the chunk before cut), which ends where the stream now is: the
    body is read again up to the byte, its line breaks counted as the reader counts lines.
    Without a seekable stream, only what the reader knows: the byte is on a later line.
    """
    if begin is not None:
        try:
            offset = stream.tell() - len(exc.object) + exc.start - begin
            stream.seek(begin)
            line = 1 + _line_breaks(stream, offset)
        except (OSError, ValueError):
            pass
        else:
            return BodyError(f"the CSV file must be UTF-8 text (line {line}: the byte at offset {offset} is not)")
    return BodyError(f"the CSV file must be UTF-8 text (a byte on line {lines_read + 1} or after is not)")


def _line_breaks(stream: IO[bytes], size: int) -> int:
    """Line breaks in the next ``size`` bytes of a stream: \r\n, \r or \n, each one break."""
    breaks = 0
    cr_before = False  # the block before ended with \r: a \n starting this one is the same break
    while size > 0 and (data := stream.read(min(size, READ_BYTES))):
        size -= len(data)
        breaks += data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n") - (cr_before and data[:1] == b"\n")
        cr_before = data[-1:] == b"\r"
    return breaks


def _end_lines(before: int, rows: list[list[str]]) -> list[int]:
    """The line each row ends on, for rows read after line ``before``: one line per row, and
    one more for each line break inside its cells (\\r\\n, \\r or \\n, as the reader counts them)."""
    lines = []
    line = before
    for cells in rows:
        line += 1
        for cell in cells:
            if "\n" in cell or "\r" in cell:
                line += cell.count("\n") + cell.count("\r") - cell.count("\r\n")
        lines.append(line)
    return lines


# -- answers ----------------------------------------------------------------------------


class Answers:
    """The answer body, written chunk by chunk into a temporary file (in memory while small).

    ``json``: ``{"model_version": ..., "predictions": [{"id", "PassengerId", "survived",
    "probability"}, ...]}``, as the API answers one passenger; ``csv``: a Kaggle
    submission, ``PassengerId,Survived``.
    """

    def __init__(self, kind: str, model_version: str, *, explain: bool = False) -> None:
        if kind not in ("json", "csv"):
            raise ValueError(f"answers are json or csv, not {kind!r}")
        if explain and kind != "json":
            raise ValueError("explanations come in json answers only")
        self.kind = kind
        self.explain = explain  # each prediction then carries its "explanation"
        self.file = tempfile.SpooledTemporaryFile(max_size=4 << 20)  # noqa: SIM115  (closed by close() or the reader)
        self._first = True
        if kind == "json":
            self.file.write(b'{"model_version":' + json.dumps(model_version).encode() + b',"predictions":[')
        else:
            self.file.write(b"PassengerId,Survived\n")

    def add(
        self,
        ids: list[str],
        passenger_ids: list[int | None],
        survived: list[int],
        probabilities: list[float],
        explanations: list[str] | None = None,
    ) -> None:
        """Write a chunk's answers; ``explanations`` are JSON objects, one per answer, when explaining."""
        if self.kind == "csv":
            self.file.write(
                "".join(
                    f"{'' if pid is None else pid},{s}\n" for pid, s in zip(passenger_ids, survived, strict=True)
                ).encode()
            )
            return
        items = [
            f'{{"id":"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}","PassengerId":'
            f'{"null" if pid is None else pid},"survived":{s},"probability":{round(p, 4)!r}}}'
            for h, pid, s, p in zip(ids, passenger_ids, survived, probabilities, strict=True)
        ]
        if explanations is not None:
            items = [f'{item[:-1]},"explanation":{why}}}' for item, why in zip(items, explanations, strict=True)]
        if items:
            self.file.write((("" if self._first else ",") + ",".join(items)).encode())
            self._first = False

    def finish(self) -> tuple[IO[bytes], int]:
        """Close the body; return the file (at its start) and its size in bytes."""
        if self.kind == "json":
            self.file.write(b"]}\n")
        size = self.file.tell()
        self.file.seek(0)
        return self.file, size

    def close(self) -> None:
        self.file.close()


# -- the flow -----------------------------------------------------------------------------

_CHECKERS = threading.local()


def _checker() -> schema.BatchChecker:
    """This thread's checker: what it remembers of the values it has seen serves every request."""
    checker = getattr(_CHECKERS, "checker", None)
    if checker is None:
        checker = _CHECKERS.checker = schema.BatchChecker()
    return checker


def process(
    stream: IO[bytes],
    *,
    kind: str,
    predictor: Predictor,
    recorder: Recorder | None,
    answers: Answers,
    source: str,
    max_rows: int,
    chunk_rows: int = CHUNK_ROWS,
    max_errors: int = schema.MAX_LISTED_ERRORS,
) -> Generator[Progress, None, Summary]:
    """Read, check, predict and stage a body chunk by chunk; then spool it all, or nothing.

    A generator: it yields :class:`Progress` after each chunk and returns the
    :class:`Summary` (``summary = yield from process(...)``, or :func:`run`).
    ``kind`` is ``json`` or ``csv``; ``recorder`` None records nothing
    (RECORDING off).

    :raise BodyError: the body is unreadable (400) or holds more than max_rows (413).
    :raise BatchInputError: some passengers are invalid (422); nothing was stored.
    :raise RecorderError: the spool refused the records (503).
    """
    if kind not in ("json", "csv"):
        raise ValueError(f"bodies are json or csv, not {kind!r}")
    started = time.perf_counter()
    # The request being answered (if any): its id goes with every row, and the rows'
    # latency counts from its arrival; answers are added to it once they are given.
    request = requestlog.current()
    request_id = None if request is None else request.id
    tally = requestlog.Tally()
    checker = _checker()
    summary = Summary(model_version=predictor.version)
    errors: list[FieldError] = []
    error_count = 0
    errors_by_field: dict[str | None, int] = {}  # every error, listed or not: the metrics count them all
    rows = 0
    arrived = started if request is None else request.started
    staged = recorder.stage(arrived=arrived) if recorder is not None else None
    try:
        chunks = (
            _json_chunks(stream, checker, chunk_rows) if kind == "json" else _csv_chunks(stream, checker, chunk_rows)
        )
        for checked, lines in chunks:
            rows += len(checked.kept)
            if rows > max_rows:
                raise BodyError(f"more than {max_rows} passengers in one request (MAX_ROWS)", too_large=True)
            for position, row_errors in checked.errors:
                error_count += len(row_errors)
                for e in row_errors:
                    errors_by_field[e.field] = errors_by_field.get(e.field, 0) + 1
                room = max_errors - len(errors)
                if room > 0:
                    line = None if lines is None else lines[position]
                    errors += [FieldError(e.index, e.field, e.message, line=line) for e in row_errors[:room]]
            if not error_count and checked.kept:
                _predict_chunk(checked, predictor, staged, answers, source, summary, request_id, tally)
            yield Progress(rows=rows, errors=error_count)
        if error_count:
            raise BatchInputError(errors, error_count)
        if rows == 0:
            raise BodyError(
                "the array is empty: send at least one passenger"
                if kind == "json"
                else "the CSV file has a header but no passengers"
            )
        if staged is not None:
            staged.commit()  # the only step that makes anything permanent
    except InputError as exc:  # a BatchInputError lists up to max_errors; the header's problems, all
        requestlog.note_invalid(
            errors_by_field if isinstance(exc, BatchInputError) else [e.field for e in exc.errors], source=source
        )
        raise
    finally:
        if staged is not None:
            staged.discard()
    if request is not None:
        request.add(tally)
    summary.seconds = time.perf_counter() - started
    return summary


Chunks = Iterator[tuple[schema.CheckedRows, "Sequence[int] | None"]]


def _json_chunks(stream: IO[bytes], checker: schema.BatchChecker, chunk_rows: int) -> Chunks:
    """Checked chunks of a JSON body (no line numbers: errors carry the array index)."""
    index = 0
    items = json_items(stream)
    while True:
        rows = [
            (position, *checker.check_object(item, index=index + position))
            for position, item in enumerate(itertools.islice(items, chunk_rows))
        ]
        if not rows:
            return
        index += len(rows)
        yield schema.CheckedRows.collect(rows), None


def _csv_chunks(stream: IO[bytes], checker: schema.BatchChecker, chunk_rows: int) -> Chunks:
    """Checked chunks of a CSV body, with each row's line number."""
    header, blocks = csv_rows(stream, block_rows=chunk_rows)
    plan = checker.csv_plan(header)
    index = 0
    for lines, block in blocks:
        checked = checker.check_text_rows(header, plan, block, first_index=index)
        index += len(checked.kept)
        yield checked, lines


def run(*args: Any, progress: Callable[[Progress], None] | None = None, **kwargs: Any) -> Summary:
    """:func:`process` to the end, calling ``progress`` after each chunk if given."""
    return finish(process(*args, **kwargs), progress)


def finish(steps: Generator[P, None, R], progress: Callable[[P], None] | None = None) -> R:
    """Run a generator of progress steps to its end; return what it returns."""
    while True:
        try:
            step = next(steps)
        except StopIteration as done:
            return done.value
        if progress is not None:
            progress(step)


def _predict_chunk(
    checked: schema.CheckedRows,
    predictor: Predictor,
    staged: Staged | None,
    answers: Answers,
    source: str,
    summary: Summary,
    request_id: str | None,
    tally: requestlog.Tally,
) -> None:
    probabilities, engineered = predictor.score_columns(checked.columns)
    p = probabilities.tolist()
    threshold = predictor.threshold
    survived = [int(x >= threshold) for x in p]
    passenger_ids = checked.columns["PassengerId"]
    ids = new_ids(len(p))
    if staged is not None:
        created_at = datetime.now(UTC)
        if len(p) >= COLUMN_LINE_ROWS:
            now = time.time()
            line = spool_columns(
                ids,
                passenger_ids,
                survived,
                probabilities,
                model_version=predictor.version,
                source=source,
                created_at=created_at,
                features=engineered,
                raw_parts=checked.parts,
                request_id=request_id,
                latency_ms=PENDING_LATENCY,
                spooled_at=now,
            )
            staged.add_line(line, rows=len(p), spooled_at=now)
        else:
            staged.add(
                spool_rows(
                    ids,
                    passenger_ids,
                    survived,
                    p,
                    model_version=predictor.version,
                    source=source,
                    created_at=created_at,
                    features_json=features.features_json(engineered),
                    raw_json=checked.texts,
                    request_id=request_id,
                    latency_ms=PENDING_LATENCY,
                )
            )
    explanations = None
    if answers.explain:
        explanations = [json.dumps(e.as_dict(), separators=(",", ":")) for e in predictor.explain(engineered)]
    answers.add(ids, passenger_ids, survived, p, explanations)
    survivors = sum(survived)
    summary.rows += len(p)
    summary.survived += survivors
    summary.chunks += 1
    tally.add(p, survivors)
