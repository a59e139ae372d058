"""System fault tests: every answered prediction reaches feature_store and predictions exactly once.

A real gunicorn serves the app from the checkout on 127.0.0.1; the faults are real too:
PostgreSQL cut off by a TCP proxy, SQLite write-locked by another connection, a worker
killed with SIGKILL in the middle of a burst (of requests of 1, 10 and 300 passengers
while the database is down), the server stopped with SIGTERM while the
database is down or a PostgreSQL table locked by another session (then started again on
the same spool; the exit within its drain's deadline) and while it is up, the whole
server killed after its rows were written with the delivery offsets lost (so everything is
resent), and a sustained load of 16 clients on 4 workers over SQLite. Each test ends by reading the
tables directly: every uuid a client was answered with is in both tables, exactly once.
"""

from __future__ import annotations

import ast
import os
import signal
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url

from tests.conftest import POSTGRES_URL, close_app, postgres_schema
from tests.system.faults_helpers import (
    SECRET_KEY,
    Burst,
    BurstResult,
    FaultServer,
    PostgresTarget,
    SqliteTarget,
    Target,
    assert_exactly_once,
    fault_env,
    flock_holders,
    get_json,
    lines_by_column,
    log_tail,
    merged,
    segments_of,
    undelivered_rows,
    wait_for_respawn,
    wait_until_delivered,
    wait_until_workers_serve,
)
from tests.system.server import STOP_TIMEOUT, GunicornServer
from tests.tcp_proxy import TcpProxy
from titanic_web import create_app, spool
from titanic_web.config import PROJECT_ROOT

pytestmark = pytest.mark.system

#: The recorder logs this when a write fails and the rows stay spooled: proof the fault bit.
WRITE_FAILED = "cannot write to the database, keeping predictions spooled"
#: A SQLite writer gives up on a lock quickly, so a locked database is a failing one (not a slow one).
SHORT_BUSY_TIMEOUT = {"SQLITE_BUSY_TIMEOUT_MS": "100"}
OUTAGE_SECONDS = 2.0  # the least time a database stays unavailable in the outage tests
#: PostgreSQL's error for a statement cancelled by its statement_timeout or lock_timeout (the recorder
#: sets both to RECORDER_WRITE_TIMEOUT_SECONDS; a statement waiting on a lock meets the first first).
WAIT_CANCELLED = "canceling statement due to"


def gunicorn_setting(name: str) -> Any:
    """A setting that gunicorn.conf.py assigns a constant (read, not run: running it sets variables)."""
    tree = ast.parse((PROJECT_ROOT / "gunicorn.conf.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"gunicorn.conf.py assigns no constant {name}")


#: Past this after SIGTERM, gunicorn's master SIGKILLs a worker that is still draining.
GRACEFUL_TIMEOUT = float(gunicorn_setting("graceful_timeout"))
#: Allowed over a drain's deadline for what it does not count: gunicorn stopping the workers (each
#: ends its request first), the interpreters' exit, a busy machine. A functional bound, not a speed.
DEADLINE_SLACK = 6.0
#: A stop must also end this long before graceful_timeout, whatever its deadline.
GRACE_MARGIN = 10.0


# -- fixtures ---------------------------------------------------------------------------------------


def init_database(url: str, model_dir: Path, spool_dir: Path) -> None:
    """Create the tables with the app's own `init-db` command (run in-process: the app is already imported)."""
    app = create_app(
        {"SQLALCHEMY_DATABASE_URI": url, "MODEL_DIR": model_dir, "SPOOL_DIR": spool_dir, "SECRET_KEY": SECRET_KEY}
    )
    try:
        result = app.test_cli_runner().invoke(args=["init-db"])
        assert result.exit_code == 0, f"init-db failed:\n{result.output}\n{result.exception!r}"
    finally:
        close_app(app)


@pytest.fixture
def target(request: pytest.FixtureRequest, model_dir: Path, tmp_path: Path) -> Iterator[Target]:
    """A fresh database with the tables: a SQLite file, or a PostgreSQL schema reached through a proxy."""
    if request.param == "sqlite":
        sqlite = SqliteTarget(tmp_path / "titanic.db")
        init_database(sqlite.url, model_dir, tmp_path / "init-spool")
        yield sqlite
        return
    engine = request.getfixturevalue("postgres")
    real = make_url(POSTGRES_URL)
    with TcpProxy(real.host or "127.0.0.1", real.port or 5432) as proxy, postgres_schema(engine) as direct_url:
        direct = make_url(direct_url)
        schema = str(direct.query["options"]).split("=", 1)[1]
        proxied = direct.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        init_database(proxied, model_dir, tmp_path / "init-spool")
        yield PostgresTarget(engine, schema, proxy, proxied)


BOTH = pytest.mark.parametrize("target", ["sqlite", "postgresql"], indirect=True)


def outage(target: Target, down: bool) -> AbstractContextManager[None]:
    return target.unavailable() if down else nullcontext()


def assert_all_answered(result: BurstResult, sent: int) -> None:
    assert result.bad_answers == [] and result.transport_errors == [], (
        f"not every request was answered 200: {result.statuses}, {result.bad_answers[:5]}, "
        f"{result.transport_errors[:5]}"
    )
    assert result.statuses == {200: sent} and len(result.answered) == sent, result.statuses


def stored_ids(target: Target, ids: set[str]) -> set[str]:
    predictions, features = target.rows()
    return ids & ({i for i, _ in predictions} | set(features))


def poll_ready(base_url: str, want: str, *, times: int, timeout: float = 15.0) -> dict[str, Any]:
    """Ask /api/ready until `times` answers in a row have status `want` (each may be another worker)."""
    deadline = time.monotonic() + timeout
    streak, body = 0, {}
    while streak < times:
        code, body = get_json(f"{base_url}/api/ready")
        assert code == 200, (code, body)
        streak = streak + 1 if body["status"] == want else 0
        if streak < times:
            assert time.monotonic() < deadline, f"/api/ready did not say {want!r} {times} times in a row: {body}"
            time.sleep(0.1)
    return body


def assert_left_spooled(target: Target, spool_dir: Path, result: BurstResult) -> None:
    """A stopped server left every answer in the spool, orphaned, and none in the database."""
    found = spool.scan(spool_dir)
    assert found["rows"] == len(result.answered), found
    assert found["segments"] >= 1 and found["orphaned"] == found["segments"], found
    assert stored_ids(target, set(result.answered)) == set()


def restart_delivers(target: Target, env: dict[str, str], log_path: Path, result: BurstResult) -> float:
    """A new server on the same spool adopts what the stopped one left and stores each answer once;
    returns the seconds it took."""
    spool_dir = Path(env["SPOOL_DIR"])
    with FaultServer(PROJECT_ROOT, env, log_path) as server:
        waited = wait_until_delivered(target, result.answered)
        assert_exactly_once(target, result)
        deadline = time.monotonic() + 10
        while spool.scan(spool_dir)["rows"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert spool.scan(spool_dir)["rows"] == 0, spool.scan(spool_dir)
        assert "recorder: adopted" in server.output()
    return waited


def stop_timed(server: GunicornServer) -> float:
    """server.stop(): SIGTERM, then wait until the master has exited; the seconds that took."""
    started = time.monotonic()
    server.stop()
    return time.monotonic() - started


def assert_stopped_by(took: float, deadline: float, log: str) -> None:
    """The server exited within its drain's deadline (plus DEADLINE_SLACK), and well inside
    gunicorn's graceful_timeout, past which a draining worker would be SIGKILLed."""
    bound = min(deadline + DEADLINE_SLACK, GRACEFUL_TIMEOUT - GRACE_MARGIN)
    assert took < bound, (
        f"gunicorn took {took:.1f}s from SIGTERM to its exit: more than the {bound:g}s allowed "
        f"(drain deadline {deadline:g}s, graceful_timeout {GRACEFUL_TIMEOUT:g}s):\n{log_tail(log)}"
    )


def assert_exited_gracefully(server: GunicornServer, workers: set[int], log: str) -> None:
    """After server.stop() (SIGTERM): the master exited by itself with status 0, and every worker
    left through gunicorn's graceful path (its "Worker exiting" line, then worker_exit's drain).

    STOP_TIMEOUT (the helper's hang guard before SIGKILL) is below gunicorn.conf.py's graceful_timeout,
    so a master that exits by itself has not SIGKILLed a worker for overrunning its drain either.
    """
    assert not server.killed_by_stop, (
        f"SIGTERM did not end gunicorn: the test helper SIGKILLed it after {STOP_TIMEOUT:.0f}s:\n{log_tail(log)}"
    )
    assert server.returncode == 0, f"gunicorn's master exited with {server.returncode} after SIGTERM:\n{log_tail(log)}"
    assert "Shutting down: Master" in log, log_tail(log)
    for pid in workers:
        assert f"Worker exiting (pid: {pid})" in log, f"worker {pid} did not exit gracefully:\n{log_tail(log)}"
    # gunicorn logs a worker that was killed, exited non-zero, or whose worker_exit hook (the drain) raised.
    not_graceful = ("was sent SIGKILL", "exited with code", "Exception during worker exit")
    for line in log.splitlines():
        assert not any(phrase in line for phrase in not_graceful), line


# -- (a) the database is unavailable during a burst ------------------------------------------------


@BOTH
def test_burst_while_the_database_is_unavailable(target: Target, model_dir: Path, tmp_path: Path) -> None:
    """PostgreSQL cut off by the proxy, or SQLite write-locked by BEGIN EXCLUSIVE, for a few seconds:
    every request is answered 200, /api/ready says degraded, and once it is back every row arrives."""
    spool_dir = tmp_path / "spool"
    env = fault_env(model_dir, target.url, spool_dir, **SHORT_BUSY_TIMEOUT)
    with FaultServer(PROJECT_ROOT, env, tmp_path / "gunicorn.log") as server:
        wait_until_workers_serve(server, 2)
        with target.unavailable():
            down_at = time.monotonic()
            result = Burst(server.base_url, total=80, clients=8).run()
            assert_all_answered(result, 80)
            if target.kind == "postgresql":
                # The readiness check itself cannot reach the database: every answer is degraded.
                answers = [get_json(f"{server.base_url}/api/ready") for _ in range(6)]
                for code, body in answers:
                    assert code == 200 and body["status"] == "degraded", (code, body)
                    assert body["database"]["status"] == "degraded", body
                assert any(body["backlog"]["rows"] > 0 for _, body in answers), answers
            else:
                # Reads still work in WAL mode; the worker's failed writes make it degraded.
                body = poll_ready(server.base_url, "degraded", times=1)
                assert body["backlog"]["rows"] > 0, body
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
            assert stored_ids(target, set(result.answered)) == set(), "rows were written while the database was down"
            assert WRITE_FAILED in server.output(), "the writers never failed: the outage did not take"

        waited = wait_until_delivered(target, result.answered)
        assert_exactly_once(target, result)
        body = poll_ready(server.base_url, "ready", times=6)
        assert body["backlog"]["rows"] == 0, body
        print(f"{target.kind}: {len(result.answered)} rows delivered {waited:.1f}s after the database came back")


# -- (b) SIGKILL of a worker in the middle of a burst ------------------------------------------------


#: Passengers in each request of the multi-passenger bursts, in turn: one (a line by row), and
#: arrays past the 8 from which a request's chunk is spooled as one line by column.
MIXED_SIZES = (1, 10, 300)


@pytest.mark.parametrize("database", ["down", "up"])
@BOTH
def test_sigkill_of_a_worker_mid_burst(target: Target, database: str, model_dir: Path, tmp_path: Path) -> None:
    """One worker SIGKILLed a third of the way into a burst; gunicorn replaces it and the replacement
    adopts the dead worker's spool segment. With the database down that segment holds a backlog,
    and the requests carry 1, 10 and 300 passengers in turn: the replacement reads the lines by
    column back from disk, and each passenger's uuid in an answer's array is stored once, with its
    own PassengerId."""
    spool_dir = tmp_path / "spool"
    env = fault_env(model_dir, target.url, spool_dir, **SHORT_BUSY_TIMEOUT)
    down = database == "down"
    total = 30 if down else 90  # down: 10 requests of each size, 3,110 passengers
    with FaultServer(PROJECT_ROOT, env, tmp_path / "gunicorn.log") as server:
        workers = wait_until_workers_serve(server, 2)
        with outage(target, down):
            burst = Burst(server.base_url, total=total, clients=6, sizes=MIXED_SIZES if down else ()).start()
            third = burst.passengers // 3
            burst.wait_for_answers(third)

            def has_spooled(pid: int) -> bool:  # with the database down: a line by column among its rows
                segments = segments_of(spool_dir, pid)
                return any(map(lines_by_column, segments)) if down else bool(segments)

            with_spool = sorted(filter(has_spooled, workers))
            assert with_spool, f"no worker has spooled its share after {third} answers: {list(spool_dir.iterdir())}"
            victim = with_spool[0]
            os.kill(victim, signal.SIGKILL)
            replaced = wait_for_respawn(server, victim, 2)
            result = burst.join()

            assert result.bad_answers == [], result.bad_answers[:5]
            # A sync worker serves one request at a time: only that one can lose its answer.
            assert len(result.transport_errors) <= 1, result.transport_errors
            assert result.sent == total
            if down:
                left = segments_of(spool_dir, victim)
                assert left, f"the killed worker {victim} left no spool segment"
                assert sum(undelivered_rows(s) for s in left) > 0, "the killed worker had no backlog"
                assert stored_ids(target, set(result.answered)) == set(), "rows written while the database was down"
                # Still down: the replacement takes the orphan over as it starts (it holds its lock).
                deadline = time.monotonic() + 60
                while not all(flock_holders(s) & replaced for s in left) and time.monotonic() < deadline:
                    time.sleep(0.1)
                holders = {s.name: flock_holders(s) for s in left}
                assert all(h & replaced for h in holders.values()), (
                    f"no live worker adopted the orphan (lock holders {holders}, workers {replaced}):\n"
                    f"{log_tail(server.output())}"
                )

        wait_until_delivered(target, result.answered)
        # The replacement adopted the dead worker's segment at start, delivered it and removed it.
        deadline = time.monotonic() + 15
        while segments_of(spool_dir, victim) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not segments_of(spool_dir, victim), (
            f"the killed worker's segments were never delivered:\n{log_tail(server.output())}"
        )
        assert "recorder: adopted" in server.output()
        assert server.worker_pids() == replaced, "a worker was replaced again after the kill"
        assert_exactly_once(target, result, extra_allowed=result.unanswered_rows)
    print(
        f"{target.kind}, database {database}: {len(result.answered)} predictions answered in {result.sent} requests, "
        f"{result.unanswered_rows} passenger(s) in requests without an answer"
    )


# -- (c) SIGTERM: with a backlog (database down) then a restart; and with the database up ----------


@BOTH
def test_sigterm_with_a_backlog_then_restart(target: Target, model_dir: Path, tmp_path: Path) -> None:
    """SIGTERM while the database is down: the workers give up draining after RECORDER_SHUTDOWN_SECONDS
    and leave the rows spooled (the server has exited within that deadline); a new server on the
    same SPOOL_DIR, database up, delivers them."""
    spool_dir = tmp_path / "spool"
    env = fault_env(model_dir, target.url, spool_dir, **SHORT_BUSY_TIMEOUT)
    with target.unavailable():
        with FaultServer(PROJECT_ROOT, env, tmp_path / "gunicorn-1.log") as server:
            wait_until_workers_serve(server, 2)
            result = Burst(server.base_url, total=60, clients=6).run()
            assert_all_answered(result, 60)
            poll_ready(server.base_url, "degraded", times=1)
            workers = server.worker_pids()
            took = stop_timed(server)  # SIGTERM: each worker drains for RECORDER_SHUTDOWN_SECONDS, then leaves the rest
            first_log = server.output()
        assert_exited_gracefully(server, workers, first_log)
        assert_stopped_by(took, float(env["RECORDER_SHUTDOWN_SECONDS"]), first_log)
        assert "stopping with" in first_log, log_tail(first_log)
        # The server is gone and the database still down: every answer waits in the spool, orphaned.
        assert_left_spooled(target, spool_dir, result)

    # The database is back; a new server on the same spool delivers what the old one left.
    waited = restart_delivers(target, env, tmp_path / "gunicorn-2.log", result)
    print(f"{target.kind}: SIGTERM to exit in {took:.1f}s; the restart delivered in {waited:.1f}s")


@pytest.mark.parametrize("target", ["postgresql"], indirect=True)
def test_sigterm_with_the_table_locked_exits_by_its_deadline_then_restart(
    target: Target, model_dir: Path, tmp_path: Path
) -> None:
    """Another session holds ACCESS EXCLUSIVE on predictions: the writers' INSERTs wait for the lock
    until RECORDER_WRITE_TIMEOUT_SECONDS cancels them. A SIGTERM then ends the server gracefully
    within RECORDER_SHUTDOWN_SECONDS, every row still spooled; once the lock is gone a new server on
    the same spool stores each answer once. Before 15f4014 the writer's INSERT waited as long as the
    lock and the drain waited for the writer, until the worker was killed. (A delivery the drain
    begins itself waits no longer than the drain has left: tests/integration/test_recorder.py.)"""
    assert isinstance(target, PostgresTarget)
    spool_dir = tmp_path / "spool"
    shutdown, write_timeout = 2.0, 1.0
    env = fault_env(
        model_dir,
        target.url,
        spool_dir,
        RECORDER_SHUTDOWN_SECONDS=f"{shutdown:g}",
        RECORDER_WRITE_TIMEOUT_SECONDS=f"{write_timeout:g}",
    )
    with FaultServer(PROJECT_ROOT, env, tmp_path / "gunicorn-1.log") as server:
        workers = wait_until_workers_serve(server, 2)
        with target.table_locked("predictions"):
            result = Burst(server.base_url, total=60, clients=6).run()
            assert_all_answered(result, 60)
            # A writer's INSERT waits on the lock: the fault took (the writers have rows to deliver).
            deadline = time.monotonic() + 15
            while not target.lock_waiters("predictions"):
                assert time.monotonic() < deadline, f"no writer waited on the lock:\n{log_tail(server.output())}"
                time.sleep(0.05)
            took = stop_timed(server)  # SIGTERM, the lock still held
            log = server.output()
        # Released only once the server has exited: nothing can have written since.
    assert_exited_gracefully(server, workers, log)
    assert_stopped_by(took, shutdown, log)
    assert WAIT_CANCELLED in log, log_tail(log)  # the wait ended by the write timeout, not by the exit
    assert "stopping with" in log, log_tail(log)
    assert_left_spooled(target, spool_dir, result)

    # The lock is gone; a new server on the same spool delivers what the old one left.
    waited = restart_delivers(target, env, tmp_path / "gunicorn-2.log", result)
    print(f"locked table: SIGTERM to exit in {took:.1f}s; the restart delivered in {waited:.1f}s")


@BOTH
def test_a_reload_with_the_database_down_then_a_sigterm_leaves_nothing_spooled(
    target: Target, model_dir: Path, tmp_path: Path
) -> None:
    """gunicorn's reload (SIGHUP) starts new workers, then stops the old ones, whose drain fails with
    the database down: their rows are orphaned after the new writers' start-up adoption (the old
    workers drain for 15 s here, long after the new ones booted). Once the database is back, a SIGTERM
    drains them with the new workers' own; it used to leave them for the next start, up to the
    writers' 30 s adoption tick, and log that nothing was left spooled."""
    spool_dir = tmp_path / "spool"
    env = fault_env(model_dir, target.url, spool_dir, RECORDER_SHUTDOWN_SECONDS="15", **SHORT_BUSY_TIMEOUT)
    with FaultServer(PROJECT_ROOT, env, tmp_path / "gunicorn.log") as server:
        old = wait_until_workers_serve(server, 2)
        with target.unavailable():
            before = Burst(server.base_url, total=100, clients=4).run()
            assert_all_answered(before, 100)
            os.kill(server.pid, signal.SIGHUP)
            deadline = time.monotonic() + 60
            while (server.worker_pids() & old or len(server.worker_pids()) < 2) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not server.worker_pids() & old, log_tail(server.output())
            after = Burst(server.base_url, total=50, clients=4, first_passenger=200_000).run()
            assert_all_answered(after, 50)
            assert "stopping with" in server.output(), log_tail(server.output())  # the old workers left rows
            found = spool.scan(spool_dir)
            assert found["orphaned"] >= 1, found  # and the new ones, which started before, have not adopted them
        workers = server.worker_pids()
        server.stop()  # the database is back: SIGTERM at once, long before an adoption tick
        log = server.output()
    assert_exited_gracefully(server, workers, log)
    assert spool.scan(spool_dir)["rows"] == 0, (spool.scan(spool_dir), log_tail(log))
    assert_exactly_once(target, merged(before, after))


@BOTH
def test_sigterm_with_the_database_up_drains_before_exit(target: Target, model_dir: Path, tmp_path: Path) -> None:
    """SIGTERM while the database is up and the writers still hold a backlog: the shutdown drains it,
    within RECORDER_SHUTDOWN_SECONDS and so well inside gunicorn's graceful_timeout.

    The backlog is made real: a short outage makes the writers back off, and with a long
    RECORDER_RETRY_MAX_SECONDS they are still asleep when the database is back and SIGTERM
    arrives, so only the drain in worker_exit can deliver those rows before the exit.
    """
    spool_dir = tmp_path / "spool"
    env = fault_env(
        model_dir,
        target.url,
        spool_dir,
        RECORDER_RETRY_MAX_SECONDS="60",
        RECORDER_SHUTDOWN_SECONDS="10",
        **SHORT_BUSY_TIMEOUT,
    )
    with FaultServer(PROJECT_ROOT, env, tmp_path / "gunicorn.log") as server:
        wait_until_workers_serve(server, 2)
        before = Burst(server.base_url, total=40, clients=8, first_passenger=100_000).run()
        assert_all_answered(before, 40)
        with target.unavailable():
            down_at = time.monotonic()
            during = Burst(server.base_url, total=60, clients=8, first_passenger=200_000).run()
            assert_all_answered(during, 60)
            time.sleep(max(0.0, 4.0 - (time.monotonic() - down_at)))  # backoff: 0.25, 0.5, 1, 2, 4 s ...
        # The database is up again; the writers sleep in their backoff with rows spooled.
        waiting = sum(undelivered_rows(segment) for segment in spool_dir.glob(f"*{spool.SUFFIX}"))
        assert waiting > 0, "nothing was spooled at SIGTERM: the drain would not be tested"
        workers = server.worker_pids()
        took = stop_timed(server)  # SIGTERM
        log = server.output()
    assert_exited_gracefully(server, workers, log)
    assert_stopped_by(took, float(env["RECORDER_SHUTDOWN_SECONDS"]), log)
    # No waiting: the rows are there the moment the server has exited.
    assert_exactly_once(target, merged(before, during))
    found = spool.scan(spool_dir)
    assert found["rows"] == 0 and found["segments"] == 0, found
    assert "stopping with" not in log, log_tail(log)
    print(f"{target.kind}: {waiting} rows spooled at SIGTERM, drained before the server exited ({took:.1f}s)")


@BOTH
def test_resending_after_lost_bookkeeping_stores_nothing_twice(target: Target, model_dir: Path, tmp_path: Path) -> None:
    """SIGKILL of the whole server after its rows are written, then the delivered offsets (.done)
    deleted: what a crash between a batch's commit and its bookkeeping leaves behind, for every batch.
    The next start adopts the segments and resends every row; the uuid keeps each stored once."""
    spool_dir = tmp_path / "spool"
    env = fault_env(model_dir, target.url, spool_dir)
    with FaultServer(PROJECT_ROOT, env, tmp_path / "gunicorn-1.log") as server:
        wait_until_workers_serve(server, 2)
        result = Burst(server.base_url, total=60, clients=6).run()
        assert_all_answered(result, 60)
        wait_until_delivered(target, result.answered)
        assert_exactly_once(target, result)
        os.killpg(server.pid, signal.SIGKILL)  # master and workers at once: no drain, no cleanup
        server.stop()  # reaps the master
    segments = sorted(spool_dir.glob(f"*{spool.SUFFIX}"))
    assert segments, "the killed server left no spool segments"
    for done in spool_dir.glob(f"*{spool.DONE_SUFFIX}"):
        done.unlink()
    assert sum(undelivered_rows(segment) for segment in segments) == len(result.answered)

    with FaultServer(PROJECT_ROOT, env, tmp_path / "gunicorn-2.log") as server:
        deadline = time.monotonic() + 45
        while any(segment.exists() for segment in segments) and time.monotonic() < deadline:
            time.sleep(0.1)
        log = server.output()
        assert not any(segment.exists() for segment in segments), f"the segments were not resent:\n{log_tail(log)}"
    assert "recorder: adopted" in log, log_tail(log)
    assert WRITE_FAILED not in log, log_tail(log)  # a resent uuid must be skipped, not fail the batch
    assert_exactly_once(target, result)


# -- (d) sustained load: 2,000 requests from 16 clients on 4 workers over SQLite --------------------


@pytest.mark.parametrize("target", ["sqlite"], indirect=True)
def test_2000_requests_16_clients_4_workers_sqlite(target: Target, model_dir: Path, tmp_path: Path) -> None:
    env = fault_env(model_dir, target.url, tmp_path / "spool", WEB_CONCURRENCY="4")
    with FaultServer(PROJECT_ROOT, env, tmp_path / "gunicorn.log", workers=4) as server:
        workers = wait_until_workers_serve(server, 4)
        started = time.monotonic()
        result = Burst(server.base_url, total=2000, clients=16).run(timeout=240)
        took = time.monotonic() - started
        assert_all_answered(result, 2000)
        waited = wait_until_delivered(target, result.answered)
        assert_exactly_once(target, result)
        log = server.output()
        served = {int(line["pid"]) for line in server.access_log() if line["path"] == "/api/predict"}
        statuses = {line["status"] for line in server.access_log()}
        assert server.worker_pids() == workers, "a worker was replaced during the load"
    assert served == workers, f"predictions served by {served}, the workers are {workers}"
    assert not any(s.startswith("5") for s in statuses), statuses
    assert "database is locked" not in log.lower(), [ln for ln in log.splitlines() if "locked" in ln.lower()][:5]
    assert WRITE_FAILED not in log, [ln for ln in log.splitlines() if WRITE_FAILED in ln][:5]
    print(f"2000 requests in {took:.1f}s ({2000 / took:.0f}/s); all rows {waited:.1f}s after the last answer")
