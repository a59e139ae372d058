"""Shared fixtures: one trained model per run, a fresh app and database per test."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_migrate import upgrade

from titanic_web import create_app, get_service
from titanic_web.config import PROJECT_ROOT
from titanic_web.extensions import db
from titanic_web.models import FeatureRow, PredictionRow
from titanic_web.training import train

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


def build_app(model_dir: Path, db_file: Path, *, tables: bool = True, **overrides: Any) -> Flask:
    """An app like production's, on its own SQLite file; the schema comes from the migrations."""
    config: dict[str, Any] = {
        "TESTING": True,
        "SECRET_KEY": "test-secret",
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{db_file}",
        "MODEL_DIR": model_dir,
        "SPOOL_DIR": db_file.parent / f"{db_file.stem}-spool",
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


@pytest.fixture
def app(model_dir: Path, tmp_path: Path) -> Iterator[Flask]:
    """A fresh app with its own SQLite file; CSRF stays on, as in production."""
    app = build_app(model_dir, tmp_path / "test.db")
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
