"""Helpers for the fault tests: bursts of concurrent clients, databases cut off and read directly,
gunicorn workers found and killed, and the spool folder inspected from outside.

Nothing here edits the server helpers in server.py; it builds on them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import requests
from sqlalchemy import Engine, text

from tests.conftest import PASSENGER
from tests.system.server import ACCESS_LINE, GunicornServer, server_env
from tests.tcp_proxy import TcpProxy
from titanic_web import spool

TIMEOUT = 30.0  # seconds for any one HTTP request
DELIVERY_WAIT = 45.0  # seconds for answered predictions to reach the tables once the database is back
SECRET_KEY = "fault-test-secret-key"


def fault_env(model_dir: Path, database_url: str, spool_dir: Path, **settings: str) -> dict[str, str]:
    """The server's environment: every recorder setting is decided here, none inherited.

    Retries are capped at 0.5 s so a recovered database is noticed at once, and a
    stopping worker drains for at most 2 s (the default 10 s would only slow the tests).
    """
    chosen = {
        "DATABASE_URL": database_url,
        "MODEL_DIR": str(model_dir),
        "SECRET_KEY": SECRET_KEY,
        "SPOOL_DIR": str(spool_dir),
        "RECORDING": "true",
        "SPOOL_FSYNC": "false",
        "RECORDER_BATCH_ROWS": "1000",
        "RECORDER_FLUSH_SECONDS": "0.2",
        "RECORDER_RETRY_MAX_SECONDS": "0.5",
        "RECORDER_SHUTDOWN_SECONDS": "2",
        "RECORDER_WRITE_TIMEOUT_SECONDS": "30",
        "SQLITE_BUSY_TIMEOUT_MS": "5000",
        "DATABASE_CONNECT_TIMEOUT": "5",
    }
    chosen.update(settings)
    return server_env(**chosen)


def log_tail(log: str, lines: int = 40) -> str:
    """The end of a server's log without the access lines: what failures should quote."""
    kept = [line for line in log.splitlines() if not ACCESS_LINE.match(line.strip())]
    return "\n".join(kept[-lines:])


class FaultServer(GunicornServer):
    """GunicornServer that first gives its workers longer to load the app.

    server.py allows 30 s for the first answer; four workers importing scikit-learn at once on
    a small, busy machine can take about that long. Wait (bounded) for the first worker to
    log that its model is loaded, then let server.py's own check run as usual.
    """

    BOOT_TIMEOUT = 90.0

    def _wait_until_up(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.BOOT_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None and " loaded from " not in self.output():
            time.sleep(0.2)
        super()._wait_until_up()


# -- clients ----------------------------------------------------------------------------------------


@dataclass
class BurstResult:
    """What the clients saw: the prediction ids answered (200), other statuses, transport errors."""

    answered: dict[str, int] = field(default_factory=dict)  # prediction id (hex) -> PassengerId sent
    statuses: Counter[int] = field(default_factory=Counter)
    bad_answers: list[str] = field(default_factory=list)  # non-200 answers, quoted
    transport_errors: list[str] = field(default_factory=list)  # no answer at all (connection cut)
    #: Passengers of the requests without an answer: rows a killed worker may have spooled unanswered.
    unanswered_rows: int = 0

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + len(self.transport_errors)


def merged(*results: BurstResult) -> BurstResult:
    """Several bursts' results as one."""
    total = BurstResult()
    for result in results:
        total.answered.update(result.answered)
        total.statuses.update(result.statuses)
        total.bad_answers += result.bad_answers
        total.transport_errors += result.transport_errors
        total.unanswered_rows += result.unanswered_rows
    return total


class Burst:
    """`total` POST /api/predict from `clients` threads, each with its own requests.Session.

    Every passenger carries its own PassengerId, so a stored row can be matched to the
    request that produced it. A request sends one passenger (a JSON object); with `sizes`,
    request i sends an array of sizes[i % len(sizes)] passengers instead. Runs in the
    background: start(), then join().
    """

    def __init__(
        self,
        base_url: str,
        total: int,
        clients: int,
        *,
        first_passenger: int = 100_000,
        sizes: Sequence[int] = (),
    ) -> None:
        self.base_url = base_url
        self.total = total
        self.clients = clients
        self.first_passenger = first_passenger
        self.sizes = tuple(sizes)
        self.result = BurstResult()
        self._lock = threading.Lock()
        self._next = 0
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def start(self) -> Burst:
        for number in range(self.clients):
            thread = threading.Thread(target=self._client, name=f"burst-client-{number}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def run(self, timeout: float = 120.0) -> BurstResult:
        return self.start().join(timeout)

    def _take(self) -> int | None:
        with self._lock:
            if self._stop.is_set() or self._next >= self.total:
                return None
            index, self._next = self._next, self._next + 1
            return index

    def _passengers(self, index: int) -> list[int]:
        """The PassengerIds request `index` sends: none shared with another request."""
        if not self.sizes:
            return [self.first_passenger + index]
        rounds, place = divmod(index, len(self.sizes))
        first = self.first_passenger + rounds * sum(self.sizes) + sum(self.sizes[:place])
        return list(range(first, first + self.sizes[place]))

    @property
    def passengers(self) -> int:
        """Passengers in all `total` requests."""
        return sum(len(self._passengers(index)) for index in range(self.total))

    def _client(self) -> None:
        with requests.Session() as session:
            while (index := self._take()) is not None:
                sent = self._passengers(index)
                payload: Any = [{**PASSENGER, "PassengerId": p} for p in sent]
                if not self.sizes:
                    payload = payload[0]
                try:
                    with session.post(f"{self.base_url}/api/predict", json=payload, timeout=TIMEOUT) as response:
                        status, body = response.status_code, response.text
                except requests.RequestException as exc:
                    with self._lock:
                        self.result.transport_errors.append(f"PassengerId {sent[0]} ({len(sent)}): {exc!r}")
                        self.result.unanswered_rows += len(sent)
                    continue
                with self._lock:
                    self.result.statuses[status] += 1
                    if status != 200:
                        self.result.bad_answers.append(f"{status} {body[:300]!r}")
                        continue
                    predictions = json.loads(body)["predictions"]
                    assert [p["PassengerId"] for p in predictions] == sent, predictions[:3]
                    for prediction in predictions:
                        self.result.answered[uuid.UUID(prediction["id"]).hex] = prediction["PassengerId"]

    def answered_count(self) -> int:
        """Predictions answered so far (passengers, not requests)."""
        with self._lock:
            return len(self.result.answered)

    def wait_for_answers(self, count: int, timeout: float = 60.0) -> None:
        """Block until `count` predictions have been answered 200 (bounded)."""
        deadline = time.monotonic() + timeout
        while self.answered_count() < count:
            if time.monotonic() > deadline or not any(t.is_alive() for t in self._threads):
                raise AssertionError(
                    f"only {self.answered_count()} of {count} answers within {timeout:.0f}s: {self.result}"
                )
            time.sleep(0.02)

    def join(self, timeout: float = 120.0) -> BurstResult:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            self._stop.set()  # let the rest finish their current request and stop
            raise AssertionError(f"burst clients still running after {timeout:.0f}s: {alive}")
        return self.result


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    with requests.get(url, timeout=TIMEOUT) as response:
        return response.status_code, response.json()


def wait_until_workers_serve(server: GunicornServer, workers: int, timeout: float = 60.0) -> set[int]:
    """Send rounds of concurrent /api/health until every one of `workers` workers has answered
    (a worker that is still loading the model accepts nothing); return their pids."""
    deadline = time.monotonic() + timeout
    url = f"{server.base_url}/api/health"

    def probe(_: int) -> int:
        with requests.get(url, timeout=TIMEOUT) as response:
            return response.status_code

    with ThreadPoolExecutor(max_workers=2 * workers) as pool:
        while True:
            statuses = list(pool.map(probe, range(4 * workers)))
            assert set(statuses) == {200}, statuses
            pids = server.worker_pids()
            served = {int(line["pid"]) for line in server.access_log() if line["path"] == "/api/health"}
            if len(pids) == workers and pids <= served:
                return pids
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"workers {pids} did not all serve within {timeout:.0f}s (served: {served}):\n"
                    f"{log_tail(server.output())}"
                )
            time.sleep(0.2)


def wait_for_respawn(server: GunicornServer, dead: int, workers: int, timeout: float = 60.0) -> set[int]:
    """Wait until gunicorn has replaced the dead worker: `workers` children, `dead` not among them."""
    deadline = time.monotonic() + timeout
    while True:
        pids = server.worker_pids()
        if dead not in pids and len(pids) == workers:
            return pids
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no replacement for worker {dead} within {timeout:.0f}s (children: {pids}):\n"
                f"{log_tail(server.output())}"
            )
        time.sleep(0.05)


# -- the spool, read from outside --------------------------------------------------------------------


def segments_of(spool_dir: Path, pid: int) -> list[Path]:
    """The spool segments a process created (segment names carry the creator's pid)."""
    return sorted(p for p in spool_dir.glob(f"*{spool.SUFFIX}") if f"-{pid}-" in p.name)


def flock_holders(path: Path) -> set[int]:
    """Pids holding a flock on a file, read from /proc/locks: unlike trying the lock
    (as `spool.scan` does), looking cannot make an adopting worker pass the file over."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return set()
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" ("->" marks a blocked waiter)
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device:
            holders.add(int(fields[4]))
    return holders


def lines_by_column(segment: Path) -> int:
    """Lines of a segment kept by column (spool.encode_columns: chunks of 8 passengers or more)."""
    try:
        data = segment.read_bytes()
    except FileNotFoundError:
        return 0
    marker = spool.BY_COLUMN.encode()
    return sum(1 for line in spool.whole_lines(data).split(b"\n") if line.split(b"\t", 3)[2:3] == [marker])


def undelivered_rows(segment: Path) -> int:
    """Rows in a segment past its delivered offset (only complete lines count)."""
    done_path = segment.with_name(segment.name + spool.DONE_SUFFIX)
    try:
        done = int(done_path.read_text().strip() or 0)
    except FileNotFoundError:
        done = 0
    try:
        data = segment.read_bytes()[done:]
    except FileNotFoundError:
        return 0
    complete = spool.whole_lines(data)
    return sum(spool.line_rows(line + b"\n") for line in complete.split(b"\n") if line)


# -- the databases, read directly and cut off ---------------------------------------------------------


class Target(Protocol):
    """A database under test, read behind the server's back."""

    kind: str
    url: str  # what the server is given

    def rows(self) -> tuple[list[tuple[str, int | None]], list[str]]:
        """(predictions as (id hex, passenger_id), feature_store prediction ids as hex)."""

    @contextmanager
    def unavailable(self) -> Iterator[None]:
        """The server cannot write while inside."""


class SqliteTarget:
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"

    def rows(self) -> tuple[list[tuple[str, int | None]], list[str]]:
        with closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)) as conn:
            conn.execute("BEGIN")  # one read transaction: both tables from the same moment
            predictions = [(str(i), p) for i, p in conn.execute("SELECT id, passenger_id FROM predictions")]
            features = [str(i) for (i,) in conn.execute("SELECT prediction_id FROM feature_store")]
            conn.rollback()
        return predictions, features

    @contextmanager
    def unavailable(self) -> Iterator[None]:
        """Another connection holds the write lock (BEGIN EXCLUSIVE) for as long as the block runs.

        WAL mode lets readers on, so the tables can still be read meanwhile.
        """
        with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as conn:
            conn.execute("BEGIN EXCLUSIVE")
            try:
                yield
            finally:
                conn.execute("ROLLBACK")


class PostgresTarget:
    kind = "postgresql"

    def __init__(self, engine: Engine, schema: str, proxy: TcpProxy, url: str) -> None:
        self.engine = engine  # direct, administrative connection (not through the proxy)
        self.schema = schema
        self.proxy = proxy
        self.url = url  # through the proxy

    def rows(self) -> tuple[list[tuple[str, int | None]], list[str]]:
        with self.engine.connect() as connection, connection.begin():
            connection.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            predictions = [
                (i.hex, p)
                for i, p in connection.execute(text(f'SELECT id, passenger_id FROM "{self.schema}".predictions'))
            ]
            features = [
                i.hex for (i,) in connection.execute(text(f'SELECT prediction_id FROM "{self.schema}".feature_store'))
            ]
        return predictions, features

    @contextmanager
    def unavailable(self) -> Iterator[None]:
        """The proxy refuses connections and cuts the open ones until the block ends."""
        self.proxy.down()
        try:
            yield
        finally:
            self.proxy.up()

    @contextmanager
    def table_locked(self, table: str) -> Iterator[None]:
        """Another session (direct, not through the proxy) holds ACCESS EXCLUSIVE on the table until
        the block ends: every statement on it waits, reads included, and none fails by itself."""
        with self.engine.connect() as connection, connection.begin():
            connection.execute(text(f'LOCK TABLE "{self.schema}".{table} IN ACCESS EXCLUSIVE MODE'))
            yield

    def lock_waiters(self, table: str) -> int:
        """Sessions waiting for a lock on the table right now (pg_locks: looking takes no lock on it)."""
        with self.engine.connect() as connection:
            waiting = connection.execute(
                text("SELECT count(*) FROM pg_locks WHERE relation = CAST(:table AS regclass) AND NOT granted"),
                {"table": f'"{self.schema}".{table}'},
            ).scalar_one()
        return int(waiting)


def wait_until_delivered(target: Target, answered: dict[str, int], timeout: float = DELIVERY_WAIT) -> float:
    """Poll the tables until every answered id is in both; return the seconds it took (bounded)."""
    start = time.monotonic()
    deadline = start + timeout
    want = set(answered)
    while True:
        predictions, features = target.rows()
        if want <= {i for i, _ in predictions} and want <= set(features):
            return time.monotonic() - start
        if time.monotonic() > deadline:
            return time.monotonic() - start  # the exactly-once check says what is missing
        time.sleep(0.2)


def assert_exactly_once(target: Target, result: BurstResult, *, extra_allowed: int = 0) -> None:
    """Every answered uuid is in both tables exactly once, with the PassengerId its request sent.

    extra_allowed: rows with ids no client saw (a request spooled by a worker killed before it
    could answer) that may exist; they must still be complete (in both tables, once).
    """
    answered = result.answered
    predictions, features = target.rows()
    in_predictions = Counter(i for i, _ in predictions)
    in_features = Counter(features)
    passenger_of = {i: p for i, p in predictions}
    problems = []
    missing_p = [i for i in answered if in_predictions[i] == 0]
    missing_f = [i for i in answered if in_features[i] == 0]
    twice_p = {i: n for i, n in in_predictions.items() if n > 1}
    twice_f = {i: n for i, n in in_features.items() if n > 1}
    wrong = {
        i: (answered[i], passenger_of[i]) for i in answered if i in passenger_of and passenger_of[i] != answered[i]
    }
    extra_p = set(in_predictions) - set(answered)
    extra_f = set(in_features) - set(answered)
    if missing_p:
        problems.append(f"{len(missing_p)} answered ids missing from predictions, e.g. {missing_p[:3]}")
    if missing_f:
        problems.append(f"{len(missing_f)} answered ids missing from feature_store, e.g. {missing_f[:3]}")
    if twice_p or twice_f:
        problems.append(f"ids stored more than once: predictions {twice_p}, feature_store {twice_f}")
    if wrong:
        problems.append(f"rows with another request's PassengerId (sent, stored): {dict(list(wrong.items())[:3])}")
    if extra_p != extra_f:
        problems.append(
            f"unanswered rows in only one table: predictions {extra_p - extra_f}, feature_store {extra_f - extra_p}"
        )
    if len(extra_p) > extra_allowed:
        problems.append(f"{len(extra_p)} rows no client was answered for (at most {extra_allowed} allowed)")
    summary = (
        f"{len(answered)} answered; predictions {len(predictions)} rows, feature_store {len(features)} rows "
        f"({target.kind})"
    )
    assert not problems, summary + ":\n  " + "\n  ".join(problems)
    assert len(predictions) == len(features) == len(answered) + len(extra_p), summary
