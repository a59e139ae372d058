"""Shared fixtures: one trained model per run, a fresh app and database per test."""

from __future__ import annotations

import os
import re
import uuid
from contextlib import contextmanager
from collections.abc import Iterator
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


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train the real model once per test run into a temporary folder."""
    out = tmp_path_factory.mktemp("model")
    train(data_path=TRAIN_CSV, out_dir=out)
    return out


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
