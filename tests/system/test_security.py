"""Security under a real gunicorn: production mode, API keys and one rate-limit count shared by
two workers through Redis."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import PASSENGER
from tests.system.faults_helpers import wait_until_workers_serve
from tests.system.server import GunicornServer, init_db, server_env
from titanic_web.config import PROJECT_ROOT

pytestmark = pytest.mark.system

TIMEOUT = 30
API_KEY = "system-api-key-0123456789abcdef"
LIMIT = 12
SECRET = "system-security-secret-key-0123456789"


def wait_for_lines(server: GunicornServer, count: int) -> list[dict[str, str]]:
    """The access log's /api/predict lines once there are `count` (gunicorn logs after answering)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in server.access_log() if line["path"] == "/api/predict"]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_two_workers_share_one_limit_through_redis(
    model_dir: Path, tmp_path: Path, redis_limits: tuple[str, str]
) -> None:
    uri, prefix = redis_limits
    env = server_env(
        APP_ENV="production",
        SECRET_KEY=SECRET,
        DATABASE_URL=f"sqlite:///{tmp_path / 'titanic.db'}",
        MODEL_DIR=str(model_dir),
        SPOOL_DIR=str(tmp_path / "spool"),
        BATCH_DIR=str(tmp_path / "batches"),
        RATE_LIMIT=f"{LIMIT}/minute",
        RATELIMIT_ENABLED="true",
        RATELIMIT_STORAGE_URI=uri,
        RATELIMIT_KEY_PREFIX=prefix,
        API_KEYS=API_KEY,
        ADMIN_API_KEYS="",
        API_KEYS_FILE="",
        ADMIN_API_KEYS_FILE="",
        TRUSTED_PROXIES="0",
        FORCE_HTTPS="false",
        FLASK_DEBUG="",
    )
    init_db(PROJECT_ROOT, env)
    with GunicornServer(PROJECT_ROOT, env, tmp_path / "gunicorn.log", workers=2) as server:
        workers = wait_until_workers_serve(server, 2)  # both have loaded the app (health is never limited)
        url = f"{server.base_url}/api/predict"
        # Without the key: 401, and not counted against the limit.
        refused = requests.post(url, json=PASSENGER, timeout=TIMEOUT)
        assert refused.status_code == 401, refused.text
        assert "Authorization: Bearer <key>" in refused.json()["message"]

        def post(_: int) -> requests.Response:  # a new connection each: either worker may take it
            return requests.post(url, json=PASSENGER, headers={"X-API-Key": API_KEY}, timeout=TIMEOUT)

        answers: list[requests.Response] = []
        with ThreadPoolExecutor(max_workers=6) as pool:
            for _ in range(10):  # rounds until both workers have answered, and past the limit
                answers += pool.map(post, range(6))
                served = {int(line["pid"]) for line in wait_for_lines(server, len(answers) + 1)}
                if served >= workers and len(answers) >= LIMIT + 6:
                    break
        assert served == workers, f"both workers must answer: served by {served}, workers {workers}"
        statuses = Counter(a.status_code for a in answers)
        # memory:// would let each worker answer LIMIT: up to twice as many 200s.
        assert statuses == {200: LIMIT, 429: len(answers) - LIMIT}, (statuses, server.output()[-3000:])
        for answer in answers:
            assert "unsafe-inline" not in answer.headers["Content-Security-Policy"]
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
            if answer.status_code == 429:
                assert 1 <= int(answer.headers["Retry-After"]) <= 61
                assert answer.json()["code"] == 429
        assert requests.get(f"{server.base_url}/api/health", timeout=TIMEOUT).status_code == 200
        assert requests.get(f"{server.base_url}/api/ready", timeout=TIMEOUT).status_code == 200


def test_production_refuses_to_start_without_secret_key(model_dir: Path, tmp_path: Path) -> None:
    env = server_env(
        APP_ENV="production",
        SECRET_KEY=None,
        DATABASE_URL=f"sqlite:///{tmp_path / 'titanic.db'}",
        MODEL_DIR=str(model_dir),
        SPOOL_DIR=str(tmp_path / "spool"),
        FLASK_DEBUG="",
    )
    env.pop("SECRET_KEY", None)
    server = GunicornServer(PROJECT_ROOT, env, tmp_path / "gunicorn.log", workers=1)
    try:
        with pytest.raises(AssertionError, match="gunicorn exited with") as refused:
            server.start()
    finally:
        server.stop()  # a regression that lets it start must not leave it running
    assert "APP_ENV=production refuses to start: SECRET_KEY is not set in the environment" in str(refused.value)
