"""Request ids, the per-request tally of answers, and the JSON log line."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from titanic_web import requestlog
from titanic_web.metrics import probability_counts
from titanic_web.requestlog import RequestInfo, Tally, log_line, request_id_from


@pytest.fixture
def no_request() -> Iterator[None]:
    """No request is being monitored before or after the test."""
    requestlog.end()
    yield
    requestlog.end()


@pytest.mark.parametrize(
    "header",
    ["abc-123", "0b7f3c1e-6d2a-4f4e-9d51-2a8e7c9b1f00", "0b7f3c1e6d2a4f4e9d512a8e7c9b1f00", "req_1.2:3", "x" * 64],
)
def test_a_sane_request_id_is_kept(header: str) -> None:
    assert request_id_from(header) == header


@pytest.mark.parametrize(
    "header",
    [None, "", "x" * 65, "has space", "new\nline", "tab\tbed", 'quote"d', "<script>", "ünïcode", "a/b", "semi;colon"],
)
def test_anything_else_gets_a_new_uuid4(header: str | None) -> None:
    first, second = request_id_from(header), request_id_from(header)
    assert first != second
    for made in (first, second):
        assert len(made) == 32 and uuid.UUID(hex=made).hex == made and uuid.UUID(hex=made).version == 4


def test_the_log_line_is_one_json_object_with_every_field() -> None:
    info = RequestInfo("abc-123", 0.0, status=200)
    tally = Tally()
    tally.add([0.2, 0.9], 1)
    info.add(tally)

    line = log_line(
        info,
        method="POST",
        route="/api/predict",
        endpoint="api.predict",
        status=200,
        latency_ms=1.23456,
        model_version="524812a58437",
    )

    assert "\n" not in line
    record = json.loads(line)
    assert isinstance(record.pop("time"), float)
    assert record == {
        "request_id": "abc-123",
        "method": "POST",
        "route": "/api/predict",
        "endpoint": "api.predict",
        "status": 200,
        "rows": 2,
        "latency_ms": 1.235,
        "model_version": "524812a58437",
    }


def test_the_log_line_escapes_what_clients_send_and_writes_null_for_unknowns() -> None:
    hostile = 'G"ET\n\\ü\u2028{'
    line = log_line(
        RequestInfo("r", 0.0), method=hostile, route=None, endpoint=None, status=404, latency_ms=0.5, model_version=None
    )
    assert "\n" not in line and line.isascii()
    record = json.loads(line)
    assert record["method"] == hostile
    assert (record["route"], record["endpoint"], record["model_version"], record["rows"]) == (None, None, None, 0)


def test_emit_sends_the_line_as_it_is_at_info(no_request: None) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    requestlog.log.addHandler(handler)
    level = requestlog.log.level
    requestlog.log.setLevel(logging.INFO)
    try:
        requestlog.emit('{"a":1}')
    finally:
        requestlog.log.removeHandler(handler)
        requestlog.log.setLevel(level)
    assert [(r.name, r.levelno, r.getMessage()) for r in records] == [("titanic_web.requests", logging.INFO, '{"a":1}')]


@pytest.fixture
def configured_log() -> Iterator[logging.Logger]:
    """The request logger at INFO with its own handler, as the app sets it up; restored after."""
    log = requestlog.log
    level, handlers, filters, propagate = log.level, list(log.handlers), list(log.filters), log.propagate
    requestlog.configure_logger(logging.INFO)
    yield log
    log.setLevel(level)
    log.handlers[:], log.filters[:], log.propagate = handlers, filters, propagate


def own_handler_alone(log: logging.Logger) -> None:
    """The request logger with only the app's handler, as in a server (pytest adds its log
    capture handlers while a test runs; the fixture puts the list back)."""
    log.handlers[:] = [requestlog._HANDLER]


def test_emit_writes_the_bare_line_to_standard_error(
    configured_log: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    own_handler_alone(configured_log)
    requestlog.emit('{"a":1}')
    requestlog.emit('{"b":2}')
    assert capsys.readouterr().err == '{"a":1}\n{"b":2}\n'


def test_a_filter_or_handler_added_to_the_request_logger_still_gets_records(
    configured_log: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[str] = []

    def only_b(record: logging.LogRecord) -> bool:
        seen.append(record.getMessage())
        return "b" in record.getMessage()

    configured_log.addFilter(only_b)
    requestlog.emit('{"a":1}')
    requestlog.emit('{"b":2}')
    assert seen == ['{"a":1}', '{"b":2}'] and capsys.readouterr().err == '{"b":2}\n'
    configured_log.removeFilter(only_b)
    records: list[logging.LogRecord] = []
    extra = logging.Handler()
    extra.emit = records.append  # type: ignore[method-assign]
    configured_log.addHandler(extra)
    requestlog.emit('{"c":3}')
    assert [r.getMessage() for r in records] == ['{"c":3}'] and capsys.readouterr().err == '{"c":3}\n'


def test_a_failed_write_is_reported_as_logging_reports_it_and_not_raised(
    configured_log: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FailsOnce:
        """A stream whose first write fails; what logging then reports lands in ``text``."""

        def __init__(self) -> None:
            self.text, self.failed = "", False

        def write(self, text: str) -> int:
            if not self.failed:
                self.failed = True
                raise OSError("disk gone")
            self.text += text
            return len(text)

        def flush(self) -> None:
            pass

    own_handler_alone(configured_log)
    stream = FailsOnce()
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.setattr(logging, "raiseExceptions", True)  # report, as the standard library does by default
    requestlog.emit('{"a":1}')
    assert "--- Logging error ---" in stream.text and "OSError: disk gone" in stream.text, stream.text
    assert '{"a":1}' in stream.text  # the record it could not write


def test_a_propagating_request_logger_passes_lines_on(
    configured_log: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    own_handler_alone(configured_log)
    records: list[str] = []
    parent = logging.getLogger("titanic_web")
    catcher = logging.Handler()
    catcher.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    parent.addHandler(catcher)
    configured_log.propagate = True
    try:
        requestlog.emit('{"a":1}')
    finally:
        parent.removeHandler(catcher)
    assert records == ['{"a":1}'] and capsys.readouterr().err == '{"a":1}\n'


def test_a_tally_adds_and_merges_answers() -> None:
    one, other = Tally(), Tally()
    one.add([0.05, 0.95], 1)
    one.add([0.5], 0)
    other.add([0.31] * 20, 0)  # the numpy path
    one.merge(other)

    assert (one.rows, one.survived) == (23, 1)
    assert one.counts == probability_counts([0.05, 0.95, 0.5, *[0.31] * 20])
    assert one.probability_sum == pytest.approx(0.05 + 0.95 + 0.5 + 0.31 * 20)


def test_begin_end_and_refused_fields(no_request: None, monkeypatch: pytest.MonkeyPatch) -> None:
    requestlog.note_invalid(["Age"], source="api")  # no request: nothing to note it on, no error
    assert requestlog.current() is None

    clock = [100.0]  # the module's clock, only in the module: pytest keeps the real one
    monkeypatch.setattr(requestlog, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    info = requestlog.begin("abc")
    assert requestlog.current() is info and info.id == "abc" and info.rows == 0
    clock[0] = 100.25
    assert info.elapsed_ms() == 250.0  # milliseconds since begin(), from the clock begin() read
    requestlog.note_invalid(["Age", None, "Age"], source="api")
    requestlog.note_invalid(["Sex"], source="form")
    requestlog.note_invalid({"Pclass": 1500, None: 2}, source="batch")  # counted beyond the errors listed
    assert info.invalid == [
        ("Age", "api", 2),
        (None, "api", 1),
        ("Sex", "form", 1),
        ("Pclass", "batch", 1500),
        (None, "batch", 2),
    ]

    requestlog.end()
    assert requestlog.current() is None
