"""Live model switching under a real gunicorn -w 2: clients send predictions without pause while a
version is activated (CLI), rolled back (API), and a tampered version is pointed at; not one
request fails, the answers change version, and every stored row names the version that answered."""

from __future__ import annotations

import shutil
import sqlite3
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import PASSENGER
from tests.system.server import FLASK, GunicornServer, init_db, server_env
from tests.unit.test_registry import tamper
from titanic_web import registry
from titanic_web.config import PROJECT_ROOT

pytestmark = pytest.mark.system

CLIENTS = 4
TIMEOUT = 30.0  # seconds for one request: far more than any answer should take
# Seconds after the pointer is written by which every worker serves the new version: it looks once a
# second and loads in about 0.2 s; the margin allows for a busy machine.
SETTLE = 5.0
WINDOW = 3.0  # seconds of answers looked at once settled
ROW_WAIT = 15.0  # seconds for answered predictions to reach the database
ADMIN_KEY = "model-switch-admin-key-0123456789"


@dataclass(frozen=True)
class Answer:
    """One request as a client saw it."""

    started: float  # time.monotonic()
    seconds: float
    version: str | None  # None: the request failed
    prediction_id: str | None
    problem: str | None = None


class Clients:
    """CLIENTS threads posting one passenger to /api/predict after another until stopped."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(TIMEOUT + 5)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = session.post(f"{self.base_url}/api/predict", json=PASSENGER, timeout=TIMEOUT)
                    seconds = time.monotonic() - started
                    if response.status_code == 200:
                        body = response.json()
                        answer = Answer(started, seconds, body["model_version"], body["predictions"][0]["id"])
                    else:
                        answer = Answer(started, seconds, None, None, f"{response.status_code} {response.text[:300]}")
                except (requests.RequestException, ValueError) as exc:
                    answer = Answer(started, time.monotonic() - started, None, None, repr(exc))
                with self._lock:
                    self.answers.append(answer)

    def since(self, start: float, end: float = float("inf")) -> list[Answer]:
        """The answers to requests started in [start, end)."""
        with self._lock:
            return [a for a in self.answers if start <= a.started < end]

    def failures(self) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.version is None]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def settled_on(clients: Clients, server: GunicornServer, since: float, version: str) -> list[Answer]:
    """Wait SETTLE seconds after `since`, then WINDOW more: every answer in that window must be
    `version`, and both workers must have answered in it (so both have switched)."""
    time.sleep(max(0.0, since + SETTLE - time.monotonic()))
    lines_before = len(server.access_log())
    time.sleep(WINDOW)
    window = clients.since(since + SETTLE, since + SETTLE + WINDOW)
    pids = {line["pid"] for line in server.access_log()[lines_before:] if line["path"] == "/api/predict"}
    assert len(pids) == 2, f"both workers should answer in the window, saw pids {pids}"
    assert len(window) >= 20, f"only {len(window)} answers in {WINDOW} s"
    versions = {a.version for a in window}
    assert versions == {version}, (
        f"answers in the window came from {versions}, expected only {version}; the server said:\n"
        + "\n".join(line for line in server.output().splitlines() if not line.startswith(("<", "{")))[-3000:]
    )
    return window


def activate_by_cli(env: dict[str, str], version: str) -> str:
    result = subprocess.run(
        [str(FLASK), "--app", "titanic_web", "model", "activate", version],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"model activate failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def stored_versions(db_path: Path, ids: set[str]) -> dict[str, str]:
    """prediction id (as answered) -> model_version stored, for the ids that have reached the table."""
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)) as conn:
        rows = conn.execute("SELECT id, model_version FROM predictions").fetchall()
    hex_ids = {i.replace("-", ""): i for i in ids}
    return {hex_ids[row[0]]: row[1] for row in rows if row[0] in hex_ids}


def p99(answers: list[Answer]) -> float:
    seconds = sorted(a.seconds for a in answers)
    return seconds[max(0, int(len(seconds) * 0.99) - 1)]


def latency_summary(answers: list[Answer]) -> str:
    seconds = sorted(a.seconds for a in answers)
    return (
        f"{len(seconds)} requests, median {statistics.median(seconds) * 1000:.1f} ms, "
        f"p99 {p99(answers) * 1000:.1f} ms, max {seconds[-1] * 1000:.1f} ms"
    )


def test_activate_and_roll_back_under_load_with_no_failed_request(model_registry: Path, tmp_path: Path) -> None:
    first = registry.read_active(model_registry)
    (second,) = [v.version for v in registry.versions(model_registry) if v.version != first]
    assert first is not None
    db_path = tmp_path / "titanic.db"
    env = server_env(
        DATABASE_URL=f"sqlite:///{db_path}",
        MODEL_DIR=str(model_registry),
        SPOOL_DIR=str(tmp_path / "spool"),
        SECRET_KEY="model-switch-secret-key",
        ADMIN_API_KEYS=ADMIN_KEY,  # activation is an admin action
        MODEL_CHECK_SECONDS="1",
        # The clients are one address sending as fast as answers come: not what a rate limit is for here.
        RATELIMIT_ENABLED="false",
    )
    init_db(PROJECT_ROOT, env)

    with GunicornServer(PROJECT_ROOT, env, tmp_path / "gunicorn.log") as server, Clients(server.base_url) as clients:
        started = time.monotonic()
        before = settled_on(clients, server, started - SETTLE, first)

        # Forward with the CLI: another process writes the pointer; the workers follow it.
        assert f"version {second} is active (was {first})" in activate_by_cli(env, second)
        forward_at = time.monotonic()  # the pointer is written when the command returns
        on_second = settled_on(clients, server, forward_at, second)

        # Back with the API: the worker that answers switches at once, the other within a second.
        back_at = time.monotonic()
        response = requests.post(
            f"{server.base_url}/api/model/activate",
            json={"version": first},
            headers={"X-API-Key": ADMIN_KEY},
            timeout=TIMEOUT,
        )
        assert response.status_code == 200, response.text
        assert response.json()["previous"] == second
        on_first = settled_on(clients, server, back_at, first)

        # A tampered version pointed at by hand: refused by each worker, the current one keeps serving.
        tampered = "tampered-copy"
        shutil.copytree(model_registry / second, model_registry / tampered)
        tamper(model_registry / tampered)
        tampered_at = time.monotonic()
        registry.write_active(model_registry, tampered)
        still_first = settled_on(clients, server, tampered_at, first)
        wait_for(lambda: server.output().count(f"model version {tampered} refused") >= 2, 10, "both refusals")

    log = server.output()
    failures = clients.failures()
    assert not failures, f"{len(failures)} failed request(s), e.g. {failures[:3]}"
    answers = clients.answers
    switch_windows = [a for at in (forward_at, back_at) for a in clients.since(at, at + SETTLE)]
    print(f"\nsteady: {latency_summary(before)}\nduring the switches: {latency_summary(switch_windows)}")
    assert {a.version for a in switch_windows} == {first, second}, "answers switched version during the windows"
    # Loading happens beside the requests, not in front of them: the switches do not slow answers
    # (bounds loose enough for a shared machine; a load on the request path would stall whole seconds).
    assert p99(switch_windows) <= 3 * p99(before) + 0.1, "requests slowed down while the workers switched"
    assert all(a.seconds < 5.0 for a in answers), "a request waited for a model load"
    assert log.count(f"model switched from {first} to {second}") == 2, "each worker switched forward once"
    assert log.count(f"model switched from {second} to {first}") == 2, "each worker rolled back once"
    assert on_second and on_first and still_first

    # Every stored prediction names the version that answered it.
    answered = {a.prediction_id: a.version for a in answers if a.prediction_id}
    wait_for(lambda: len(stored_versions(db_path, set(answered))) == len(answered), ROW_WAIT, "rows in the database")
    stored = stored_versions(db_path, set(answered))
    assert stored == answered
