"""Request ids, each request's timing and answers, and its one JSON log line.

No Flask here: :mod:`titanic_web.telemetry` opens a :class:`RequestInfo` when a
request arrives and closes it once the request is answered. Code below the
blueprints (:mod:`titanic_web.batch`, :mod:`titanic_web.service`) reads the
current one for the request id and arrival time it stores with each prediction,
and adds what it answered, without touching Flask's request objects.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from typing import Any, TextIO

from titanic_web.ids import new_request_id
from titanic_web.metrics import PROBABILITY_BUCKETS, probability_counts

#: The longest request id kept: the width of the predictions.request_id column.
MAX_REQUEST_ID = 64
#: An X-Request-ID taken as it is: a short token of letters, digits and ``. _ : -``
#: (a uuid, with or without dashes, passes). Anything else gets a new id.
_SANE_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_REQUEST_ID}}}")

#: One JSON line per request goes to this logger (see :func:`configure_logger`).
log = logging.getLogger("titanic_web.requests")

#: The handler :func:`configure_logger` gave the logger (None until it has run).
_HANDLER: logging.Handler | None = None

_current: ContextVar[RequestInfo | None] = ContextVar("titanic_web_request", default=None)


def request_id_from(header: str | None) -> str:
    """The client's X-Request-ID when it is a sane short token, else a new uuid4 in hex."""
    if header and _SANE_ID.fullmatch(header):
        return header
    return new_request_id()


@dataclass(slots=True)
class Tally:
    """Passengers answered: how many, how many predicted to survive, their probabilities by bucket."""

    rows: int = 0
    survived: int = 0
    counts: list[int] = field(default_factory=lambda: [0] * (len(PROBABILITY_BUCKETS) + 1))
    probability_sum: float = 0.0

    def add(self, probabilities: Sequence[float], survived: int) -> None:
        """Add answered passengers: their probabilities and how many of them are predicted to survive."""
        counts = probability_counts(probabilities)
        self.counts = counts if not self.rows else [a + b for a, b in zip(self.counts, counts, strict=True)]
        self.rows += len(probabilities)
        self.survived += survived
        self.probability_sum += float(sum(probabilities))

    def merge(self, other: Tally) -> None:
        """Add another tally's passengers to this one."""
        self.rows += other.rows
        self.survived += other.survived
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.probability_sum += other.probability_sum


@dataclass(slots=True, eq=False)
class RequestInfo:
    """One request as monitored: its id, arrival, status, answers and refused fields."""

    id: str
    started: float  # time.perf_counter() at arrival
    status: int = 500  # until the answer is known
    answered: Tally | None = None  # None until something is answered
    invalid: list[tuple[str | None, str, int]] | None = None  # (field, source, errors) of a refused request
    method: str = ""
    route: str | None = None  # the matched URL rule, None when nothing matched
    endpoint: str | None = None
    streamed: bool = False  # the body is produced while it is sent: accounted once it ends
    settled: bool = False  # counted and logged

    @property
    def rows(self) -> int:
        """Passengers answered."""
        return 0 if self.answered is None else self.answered.rows

    def elapsed_ms(self) -> float:
        """Milliseconds since the request arrived."""
        return (time.perf_counter() - self.started) * 1000.0

    def add(self, tally: Tally) -> None:
        """Add answered passengers (given once the answers can be given: stored, or recording is off)."""
        if self.answered is None:
            self.answered = tally
        else:
            self.answered.merge(tally)


def begin(header: str | None) -> RequestInfo:
    """Start monitoring a request that just arrived, with its X-Request-ID header (or None)."""
    info = RequestInfo(request_id_from(header), time.perf_counter())
    _current.set(info)
    return info


def resume(info: RequestInfo) -> None:
    """Make info the current request again (a streamed body is produced after the view returned)."""
    _current.set(info)


def current() -> RequestInfo | None:
    """The request being answered in this thread, if any (None in commands and plain calls)."""
    return _current.get()


def end() -> None:
    """Stop monitoring the current request."""
    _current.set(None)


def note_invalid(fields: Iterable[str | None] | Mapping[str | None, int], *, source: str) -> None:
    """Record a refused request's errors for the metrics: the field of each error, or a mapping
    of fields to how many errors each had (a batch counts more errors than it lists)."""
    info = _current.get()
    if info is not None:
        counts = fields if isinstance(fields, Mapping) else Counter(fields)
        info.invalid = [*(info.invalid or ()), *((name, source, count) for name, count in counts.items())]


def log_line(
    info: RequestInfo,
    *,
    method: str,
    route: str | None,
    endpoint: str | None,
    status: int,
    latency_ms: float,
    model_version: str | None,
) -> str:
    """The request's log line: one JSON object (time, request_id, method, route, endpoint, status,
    rows, latency_ms, model_version).

    Written out by hand, with the json module's own string encoder, because it runs on
    every request: a third of the cost of ``json.dumps`` of a dict.
    """
    return (
        f'{{"time":{time.time():.3f},"request_id":{_text(info.id)},"method":{_text(method)},'
        f'"route":{_text(route)},"endpoint":{_text(endpoint)},"status":{int(status)},'
        f'"rows":{info.rows},"latency_ms":{float(latency_ms):.3f},"model_version":{_text(model_version)}}}'
    )


def _text(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


def emit(line: str) -> None:
    """Send one line to the request logger at INFO (the caller checks that INFO is enabled).

    With the logger as :func:`configure_logger` leaves it (its one handler, no filters, not
    propagating), the line goes to standard error as that handler would write it, under the
    handler's lock, without the ``LogRecord`` that nothing would read: that record was a
    fifth of what monitoring costs a request. Any other handler, filter or a propagating
    logger gets records, as usual.
    Otherwise ``makeRecord`` and ``handle`` rather than ``info``: the caller's file and
    line, which ``info`` looks up by walking the stack, mean nothing here.
    """
    handler = _HANDLER
    if (
        handler is not None
        and log.handlers == [handler]
        and not log.propagate
        and not log.filters
        and not handler.filters
        and handler.level <= logging.INFO
        and type(handler.formatter) is _LineFormatter
    ):
        with handler.lock:  # type: ignore[union-attr]  # Handler.createLock made it
            try:
                stream = sys.stderr
                stream.write(line + "\n")
                stream.flush()
            except RecursionError:  # as StreamHandler.emit: not a logging error
                raise
            except Exception:
                handler.handleError(_record(line))  # as StreamHandler reports a failed write
        return
    log.handle(_record(line))


def _record(line: str) -> logging.LogRecord:
    return log.makeRecord(log.name, logging.INFO, __file__, 0, line, (), None)


class _LineFormatter(logging.Formatter):
    """The line as it is: the message, nothing added (what ``%(message)s`` gives, for less work)."""

    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (a test runner may swap it)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ and setStream assign it
        pass


def configure_logger(level: str | int) -> None:
    """Give the request logger its level (LOG_LEVEL: WARNING silences it) and its own handler,
    so each line is the bare JSON object."""
    log.setLevel(level)
    log.propagate = False
    global _HANDLER
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):  # once per process
        handler = _StderrHandler()
        handler.setFormatter(_LineFormatter())
        log.addHandler(handler)
        _HANDLER = handler
