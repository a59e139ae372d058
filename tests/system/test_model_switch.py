"""Live model switching under a real gunicorn -w 2: clients send predictions without pause while a
version is activated (CLI), rolled back (API), and a tampered version is pointed at; not one
request fails, the answers change version, and every stored row names the version that answered."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import PASSENGER
from tests.system.server import FLASK, GunicornServer, init_db, server_env
from tests.unit.test_registry import tamper
from titanic_web import registry
from titanic_web.config import PROJECT_ROOT

pytestmark = pytest.mark.system

CLIENTS = 4
TIMEOUT = 30.0  # hang guard for one request: an answer that has not come by then counts as failed
# Hang guard for the workers to serve a version: each looks at the pointer once a second and loads in
# about 0.2 s. Only a worker that never switches (or never answers) reaches it.
SETTLE_TIMEOUT = 60.0
WINDOW_ANSWERS = 20  # the fewest answers in a window looked at
# In a window, each worker must have answered more than this many requests (access log lines after the
# window opened): at most CLIENTS requests were in flight when it opened, and at most CLIENTS answered
# ones are not yet in Clients.answers, so at least one of its answers to a request begun in the window
# is among the window's answers.
WORKER_LINES = 2 * CLIENTS
ROW_WAIT = 15.0  # seconds for answered predictions to reach the database
ADMIN_KEY = "model-switch-admin-key-0123456789"


@dataclass(frozen=True)
class Answer:
    """One request as a client saw it."""

    started: float  # time.monotonic()
    version: str | None  # None: the request failed (no answer, not 200, or not a valid prediction)
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
                    if response.status_code == 200:
                        answer = valid_answer(started, response.json())
                    else:
                        answer = Answer(started, None, None, f"{response.status_code} {response.text[:300]}")
                except (requests.RequestException, ValueError) as exc:
                    answer = Answer(started, None, None, repr(exc))
                with self._lock:
                    self.answers.append(answer)

    def since(self, start: float, end: float = float("inf")) -> list[Answer]:
        """The answers to requests started in [start, end)."""
        with self._lock:
            return [a for a in self.answers if start <= a.started < end]

    def failures(self) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.version is None]


def valid_answer(started: float, body: Any) -> Answer:
    """The answer to PASSENGER if `body` is a valid one (a model version, and one prediction for that
    passenger with an id, a class and a probability); otherwise a failed answer quoting it."""
    try:
        version, (prediction,) = body["model_version"], body["predictions"]
        valid = (
            isinstance(version, str)
            and bool(version)
            and isinstance(prediction["id"], str)
            and bool(prediction["id"])
            and prediction["PassengerId"] == PASSENGER["PassengerId"]
            and prediction["survived"] in (0, 1)
            and 0.0 <= prediction["probability"] <= 1.0
        )
    except (KeyError, TypeError, ValueError):
        valid = False
    if not valid:
        return Answer(started, None, None, f"not a valid prediction: {str(body)[:300]}")
    return Answer(started, version, prediction["id"])


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def server_said(server: GunicornServer) -> str:
    """The server's log without the access and request lines."""
    return "\n".join(line for line in server.output().splitlines() if not line.startswith(("<", "{")))[-3000:]


def answer_window(clients: Clients, server: GunicornServer, workers: set[int], deadline: float) -> list[Answer]:
    """The answers to requests begun from now until at least WINDOW_ANSWERS have come and each worker
    has answered more than WORKER_LINES requests (so each answered at least one of them). None may fail."""
    opened = time.monotonic()
    lines_before = len(server.access_log())
    while True:
        lines = server.access_log()[lines_before:]  # read before the answers: see WORKER_LINES
        window = clients.since(opened)
        failed = [a for a in window if a.version is None]
        assert not failed, f"{len(failed)} failed request(s), e.g. {failed[:3]}"
        served = Counter(int(line["pid"]) for line in lines if line["path"] == "/api/predict")
        assert set(served) <= workers, f"predictions answered by {set(served)}, the workers were {workers}"
        if len(window) >= WINDOW_ANSWERS and all(served[pid] > WORKER_LINES for pid in workers):
            return window
        assert time.monotonic() < deadline, (
            f"no complete window: {len(window)} answers, predictions per worker {dict(served)} (workers {workers});"
            f" the server said:\n{server_said(server)}"
        )
        time.sleep(0.1)


def settled_on(clients: Clients, server: GunicornServer, version: str) -> list[Answer]:
    """Wait until every worker serves `version`, then return a window of answers that must all be it.

    Requests spread over the workers, so a window in which each worker answered and every answer is
    `version` shows that each has switched. Windows are looked at one after another until one is
    (mixed ones are the switch still under way); the next window must then hold `version` alone.
    SETTLE_TIMEOUT only stops a worker that never switches from hanging the test.
    """
    workers = server.worker_pids()
    assert len(workers) == 2, f"gunicorn runs {workers}, expected 2 workers"
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while {a.version for a in answer_window(clients, server, workers, deadline)} != {version}:
        assert time.monotonic() < deadline, f"the workers did not all serve {version}:\n{server_said(server)}"
    window = answer_window(clients, server, workers, time.monotonic() + SETTLE_TIMEOUT)
    versions = {a.version for a in window}
    assert versions == {version}, (
        f"once every worker served {version}, answers still came from {versions}; the server said:\n"
        + server_said(server)
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
        before = settled_on(clients, server, first)

        # Forward with the CLI: another process writes the pointer; the workers follow it.
        forward_at = time.monotonic()
        assert f"version {second} is active (was {first})" in activate_by_cli(env, second)
        on_second = settled_on(clients, server, second)

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
        on_first = settled_on(clients, server, first)

        # A tampered version pointed at by hand: refused by each worker, the current one keeps serving.
        tampered = "tampered-copy"
        shutil.copytree(model_registry / second, model_registry / tampered)
        tamper(model_registry / tampered)
        registry.write_active(model_registry, tampered)
        wait_for(
            lambda: server.output().count(f"model version {tampered} refused") >= 2, SETTLE_TIMEOUT, "both refusals"
        )
        still_first = settled_on(clients, server, first)

    log = server.output()
    # Not one request failed or hung (each had TIMEOUT), before, during or after the switches: all were
    # answered 200 with a valid prediction, by one of the two good versions, never the tampered one.
    failures = clients.failures()
    assert not failures, f"{len(failures)} failed request(s), e.g. {failures[:3]}"
    answers = clients.answers
    assert {a.version for a in answers} == {first, second}, {a.version for a in answers}
    assert before and on_second and on_first and still_first
    # During each switch (from the activation until every worker served the new version) the clients
    # were answered throughout, by the old version or the new one, the old then the new.
    switching = [
        *clients.since(forward_at, min(a.started for a in on_second)),
        *clients.since(back_at, min(a.started for a in on_first)),
    ]
    assert {a.version for a in switching} == {first, second}, {a.version for a in switching}
    assert log.count(f"model switched from {first} to {second}") == 2, "each worker switched forward once"
    assert log.count(f"model switched from {second} to {first}") == 2, "each worker rolled back once"

    # Every stored prediction names the version that answered it.
    answered = {a.prediction_id: a.version for a in answers if a.prediction_id}
    wait_for(lambda: len(stored_versions(db_path, set(answered))) == len(answered), ROW_WAIT, "rows in the database")
    stored = stored_versions(db_path, set(answered))
    assert stored == answered
