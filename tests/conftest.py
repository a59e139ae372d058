"""Shared fixtures: one trained model per run, a fresh app and database per test."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_migrate import upgrade
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from titanic_web import create_app, get_service
from titanic_web.config import PROJECT_ROOT
from titanic_web.extensions import db
from titanic_web.models import FeatureRow, PredictionRow
from titanic_web.training import train

#: A test that skips itself fails (tests/noskip.py).
pytest_plugins = ["tests.noskip", "pytester"]

#: An administrative connection to the PostgreSQL that the machine and CI run.
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

TRAIN_CSV = PROJECT_ROOT / "model" / "data" / "train.csv"
TEST_CSV = PROJECT_ROOT / "model" / "data" / "test.csv"

#: A valid passenger in the API's JSON form (PassengerId 892 of test.csv).
PASSENGER: dict[str, Any] = {
    "PassengerId": 892,
    "Pclass": 3,
    "Name": "Kelly, Mr. James",
    "Sex": "male",
    "Age": 34.5,
    "SibSp": 0,
    "Parch": 0,
    "Ticket": "330911",
    "Fare": 7.8292,
    "Cabin": None,
    "Embarked": "Q",
}


#: Every environment variable the app reads (config.py, security.py, auth.py): tests that decide
#: the settings start without any of them, and test servers inherit none of them.
SETTINGS_ENV = (
    "APP_ENV",
    "SECRET_KEY",
    "DATABASE_URL",
    "DATABASE_CONNECT_TIMEOUT",
    "SQLITE_BUSY_TIMEOUT_MS",
    "MODEL_DIR",
    "MODEL_CHECK_SECONDS",
    "TRAIN_DATA",
    "MAX_ROWS",
    "MAX_CONTENT_LENGTH",
    "CSRF_TIME_LIMIT",
    "LOG_LEVEL",
    "BATCH_CHUNK_ROWS",
    "BATCH_DIR",
    "BATCH_KEEP_HOURS",
    "RECORDING",
    "SPOOL_DIR",
    "SPOOL_FSYNC",
    "RECORDER_BATCH_ROWS",
    "RECORDER_FLUSH_SECONDS",
    "RECORDER_RETRY_MAX_SECONDS",
    "RECORDER_SHUTDOWN_SECONDS",
    "RECORDER_WRITE_TIMEOUT_SECONDS",
    "PROMETHEUS_MULTIPROC_DIR",
    "DRIFT_MIN_ROWS",
    "DRIFT_MAX_ROWS",
    "HISTORY_PAGE_ROWS",
    "EXPORT_CHUNK_ROWS",
    "API_KEYS",
    "API_KEYS_FILE",
    "ADMIN_API_KEYS",
    "ADMIN_API_KEYS_FILE",
    "RATE_LIMIT",
    "RATELIMIT_ENABLED",
    "RATELIMIT_STORAGE_URI",
    "RATELIMIT_KEY_PREFIX",
    "FORCE_HTTPS",
    "TRUSTED_PROXIES",
)

#: PASSENGER as the form posts it: every field as text, a missing value as an empty field.
FORM_VALUES: dict[str, str] = {name: "" if value is None else str(value) for name, value in PASSENGER.items()}


@pytest.fixture(autouse=True)
def metrics_in_memory(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts with prometheus_client counting in memory.

    An app created with PROMETHEUS_MULTIPROC_DIR switches the whole process to
    per-process files and sets that variable (as gunicorn would); without this,
    every app a later test creates would inherit both.
    """
    from titanic_web.metrics import use_directory

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    use_directory(None)
    yield
    use_directory(None)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train the real model once per test run into a temporary folder."""
    out = tmp_path_factory.mktemp("model")
    train(data_path=TRAIN_CSV, out_dir=out)
    return out


@pytest.fixture(scope="session")
def second_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another model version, cheaply: one candidate fitted on the first 400 passengers of train.csv."""
    from titanic_web.training import CANDIDATES

    folder = tmp_path_factory.mktemp("second-model")
    lines = TRAIN_CSV.read_text().splitlines(keepends=True)
    data = folder / "train-400.csv"
    data.write_text("".join(lines[:401]))
    out = folder / "model"
    train(data_path=data, out_dir=out, candidates=CANDIDATES[:1])
    return out


def copy_into_registry(root: Path, model: Path) -> str:
    """Copy a trained model folder into a registry under its version; return the version."""
    import json
    import shutil

    version = str(json.loads((model / "model.json").read_text())["version"])
    shutil.copytree(model, root / version)
    return version


@pytest.fixture
def model_registry(tmp_path: Path, model_dir: Path, second_model_dir: Path) -> Path:
    """A registry of its own for one test: model_dir's version (active) and second_model_dir's."""
    from titanic_web import registry

    root = tmp_path / "registry"
    root.mkdir()
    active = copy_into_registry(root, model_dir)
    copy_into_registry(root, second_model_dir)
    registry.write_active(root, active)
    return root


def build_app(
    model_dir: Path, db_file: Path, *, tables: bool = True, database_url: str | None = None, **overrides: Any
) -> Flask:
    """An app like production's; the schema comes from the migrations.

    The database is the SQLite file db_file unless database_url names another;
    the spool lives beside db_file either way.
    """
    config: dict[str, Any] = {
        "TESTING": True,
        "SECRET_KEY": "test-secret",
        "SQLALCHEMY_DATABASE_URI": database_url or f"sqlite:///{db_file}",
        "MODEL_DIR": model_dir,
        "SPOOL_DIR": db_file.parent / f"{db_file.stem}-spool",
        "BATCH_DIR": db_file.parent / f"{db_file.stem}-batches",
    }
    config.update(overrides)
    app = create_app(config)
    if tables:
        with app.app_context():
            upgrade()
    return app


def close_app(app: Flask) -> None:
    """Stop the app's recorder and release its database connections."""
    get_service(app).recorder.stop(timeout=1)
    with app.app_context():
        db.engine.dispose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Engine]:
    """The PostgreSQL server this machine and CI run; a missing server fails the run, never skips."""
    engine = create_engine(POSTGRES_URL, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_URL} ({exc.orig}); start it, or point "
            "TEST_POSTGRES_URL at one (the tests need a real server)"
        )
    yield engine
    engine.dispose()


@contextmanager
def postgres_schema(engine: Engine) -> Iterator[str]:
    """A fresh, empty schema for one test; the URL's search_path points into it."""
    schema = f"test_{uuid.uuid4().hex[:16]}"
    with engine.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each database-backed test runs on SQLite and on a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    with postgres_schema(request.getfixturevalue("postgres")) as url:
        yield url


@pytest.fixture
def app(model_dir: Path, tmp_path: Path, database_url: str) -> Iterator[Flask]:
    """A fresh app with its own database; CSRF stays on, as in production."""
    app = build_app(model_dir, tmp_path / "test.db", database_url=database_url)
    yield app
    close_app(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> Any:
    return app.test_cli_runner()


def flush(app: Flask, timeout: float = 10.0) -> None:
    """Deliver everything the app's recorder has spooled, so tests can read the tables."""
    assert get_service(app).recorder.flush(timeout), "the recorder could not deliver its spool"


def csrf_token(html: str) -> str:
    """The CSRF token of the form on a rendered page."""
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def count_rows(app: Flask) -> tuple[int, int]:
    """(predictions, feature_store) row counts, once the recorder has delivered its spool."""
    flush(app)
    with app.app_context():
        predictions = db.session.scalar(db.select(db.func.count()).select_from(PredictionRow))
        features = db.session.scalar(db.select(db.func.count()).select_from(FeatureRow))
    return int(predictions or 0), int(features or 0)


#: The Redis that the machine and CI run, for rate-limit counts shared by workers; db 15 keeps
#: the tests' keys apart from anything else on the server (each test also has its own key prefix).
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def redis_limits() -> Iterator[tuple[str, str]]:
    """(RATELIMIT_STORAGE_URI, RATELIMIT_KEY_PREFIX) on the real Redis; a missing server fails, never skips.

    The prefix is new for each test, and its keys are deleted afterwards.
    """
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); start it, or point TEST_REDIS_URL at one")
    prefix = f"titanic-test-{uuid.uuid4().hex[:12]}"
    try:
        yield REDIS_URL, prefix
    finally:
        for key in client.scan_iter(match=f"*{prefix}*"):
            client.delete(key)
        client.close()
