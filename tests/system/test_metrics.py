"""GET /metrics under a real `gunicorn -w 2`: totals summed over both workers, whichever answered;
a worker killed and replaced neither breaks /metrics nor loses its counts; the folder emptied at start."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest
import requests
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PASSENGER
from tests.system.faults_helpers import fault_env, wait_for_respawn, wait_until_workers_serve
from tests.system.server import GunicornServer, init_db
from titanic_web.config import PROJECT_ROOT

pytestmark = pytest.mark.system

TIMEOUT = 30  # seconds for any one HTTP request
N = 60  # requests in the first round
M = 20  # requests after a worker was killed and replaced

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
PREDICT_200 = ("titanic_http_requests_total", (("endpoint", "api.predict"), ("status", "200")))


def scrape(base_url: str) -> Samples:
    response = requests.get(f"{base_url}/metrics", timeout=TIMEOUT)
    assert response.status_code == 200, response.text[:1000]
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def predict(base_url: str, numbers: range) -> None:
    """One passenger per request, from six clients at once, each request with its own id."""

    def one(i: int) -> None:
        response = requests.post(
            f"{base_url}/api/predict",
            json={**PASSENGER, "PassengerId": i},
            headers={"X-Request-ID": f"sys-{i}"},
            timeout=TIMEOUT,
        )
        assert response.status_code == 200, response.text[:500]
        assert response.headers["X-Request-ID"] == f"sys-{i}"

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(one, numbers))


def answered_by(server: GunicornServer, path: str, total: int | None = None) -> Counter[int]:
    """How many requests to path each worker answered, from the access log (waiting up to 5 s for
    `total` lines: gunicorn writes a line after sending its response)."""
    deadline = time.monotonic() + 5
    while True:
        counts = Counter(int(line["pid"]) for line in server.access_log() if line["path"] == path)
        if total is None or sum(counts.values()) >= total or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def stored_rows(db_path: Path) -> int:
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)) as conn:
        return int(conn.execute("SELECT count(*) FROM predictions").fetchone()[0])


def settled(server: GunicornServer, db_path: Path, rows: int, timeout: float = 45.0) -> Samples:
    """Scrapes until every answered row is in the database and nothing waits; the last scrape."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(server.base_url)
        if stored_rows(db_path) == rows and samples[("titanic_recorder_backlog_rows", ())] == 0:
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{stored_rows(db_path)} of {rows} rows stored; backlog "
                f"{samples[('titanic_recorder_backlog_rows', ())]}:\n{server.output()[-3000:]}"
            )
        time.sleep(0.2)


@pytest.fixture
def prometheus_dir(tmp_path: Path) -> Path:
    """The metrics folder, holding what a previous server left: a counter file and a file of ours."""
    folder = tmp_path / "prometheus"
    folder.mkdir()
    stale = MmapedDict(str(folder / "counter_999999.db"))
    key = mmap_key(
        "titanic_http_requests",
        "titanic_http_requests_total",
        ["endpoint", "status"],
        ["api.predict", "200"],
        "HTTP requests answered, by endpoint and status.",
    )
    stale.write_value(key, 1000.0, 0.0)
    stale.close()
    (folder / "README.txt").write_text("not prometheus_client's: kept")
    return folder


@pytest.fixture
def server(model_dir: Path, tmp_path: Path, prometheus_dir: Path) -> Iterator[tuple[GunicornServer, Path]]:
    db_path = tmp_path / "titanic.db"
    env = fault_env(model_dir, f"sqlite:///{db_path}", tmp_path / "spool", PROMETHEUS_MULTIPROC_DIR=str(prometheus_dir))
    init_db(PROJECT_ROOT, env)
    with GunicornServer(PROJECT_ROOT, env, tmp_path / "gunicorn.log") as running:
        yield running, db_path


def test_metrics_sum_both_workers_and_survive_a_killed_worker(
    server: tuple[GunicornServer, Path], prometheus_dir: Path
) -> None:
    gunicorn, db_path = server
    workers = wait_until_workers_serve(gunicorn, 2)
    # Emptied at start: the stale counter is gone (it would add 1000), other files stay.
    assert not (prometheus_dir / "counter_999999.db").exists()
    assert (prometheus_dir / "README.txt").read_text() == "not prometheus_client's: kept"

    predict(gunicorn.base_url, range(1, N + 1))

    per_worker = answered_by(gunicorn, "/api/predict", N)
    assert set(per_worker) == workers and all(per_worker.values()), per_worker  # both answered some
    assert sum(per_worker.values()) == N
    samples = settled(gunicorn, db_path, N)
    # Whichever worker answers /metrics, the totals are the sum over both. Which worker accepts a
    # connection is the kernel's choice, so scrape until both have answered (at least 6 scrapes).
    for scrapes in range(1, 61):
        if scrapes > 6 and set(answered_by(gunicorn, "/metrics")) == workers:
            break
        samples = scrape(gunicorn.base_url)
        assert samples[PREDICT_200] == N
        assert (
            samples[("titanic_predictions_total", (("survived", "0"),))]
            + samples[("titanic_predictions_total", (("survived", "1"),))]
            == N
        )
        assert samples[("titanic_prediction_probability_count", ())] == N
        assert samples[("titanic_http_request_duration_seconds_count", (("endpoint", "api.predict"),))] == N
        assert samples[("titanic_recorder_rows_spooled_total", ())] == N
        assert samples[("titanic_recorder_rows_written_total", ())] == N
        versions = {labels: v for (name, labels), v in samples.items() if name == "titanic_model_info"}
        assert list(versions.values()) == [1.0], versions  # one version, answering
    assert set(answered_by(gunicorn, "/metrics")) == workers, "both workers should have answered /metrics"

    # One JSON log line per request, with the id the client sent.
    lines = [json.loads(line) for line in gunicorn.output().splitlines() if line.startswith('{"time":')]
    predict_lines = [line for line in lines if line["endpoint"] == "api.predict"]
    assert sorted(line["request_id"] for line in predict_lines) == sorted(f"sys-{i}" for i in range(1, N + 1))
    assert all(line["status"] == 200 and line["rows"] == 1 and line["latency_ms"] > 0 for line in predict_lines)

    # Kill one worker: gunicorn replaces it, its live gauges leave /metrics, its counts stay.
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    replaced = wait_for_respawn(gunicorn, victim, 2)
    workers_now = wait_until_workers_serve(gunicorn, 2)
    assert replaced == workers_now and victim not in workers_now
    assert (prometheus_dir / f"counter_{victim}.db").exists()
    assert not list(prometheus_dir.glob(f"gauge_live*_{victim}.db"))
    for _ in range(4):
        assert scrape(gunicorn.base_url)[PREDICT_200] == N

    predict(gunicorn.base_url, range(N + 1, N + M + 1))

    samples = settled(gunicorn, db_path, N + M)
    assert samples[PREDICT_200] == N + M
    assert samples[("titanic_prediction_probability_count", ())] == N + M
    assert samples[("titanic_recorder_rows_written_total", ())] == N + M
    assert sum(answered_by(gunicorn, "/api/predict", N + M).values()) == N + M
