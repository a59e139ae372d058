"""Integration fixtures: app variants built the same way as tests/conftest.py's `app`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.conftest import build_app, close_app
from titanic_web.predictor import Predictor

MakeApp = Callable[..., Flask]


@pytest.fixture
def make_app(model_dir: Path, tmp_path: Path) -> Iterator[MakeApp]:
    """Build extra apps with their own SQLite file and settings overrides.

    ``make_app(MAX_ROWS=3)`` gives an app like the ``app`` fixture with that
    setting changed; ``tables=False`` leaves the database without tables.
    """
    built: list[Flask] = []

    def build(*, tables: bool = True, **overrides: Any) -> Flask:
        app = build_app(model_dir, tmp_path / f"variant-{len(built)}.db", tables=tables, **overrides)
        built.append(app)
        return app

    yield build
    for app in built:
        close_app(app)


@pytest.fixture
def no_model_dir(tmp_path: Path) -> Path:
    """An empty folder: MODEL_DIR pointing here means "nobody has trained yet"."""
    empty = tmp_path / "no-model"
    empty.mkdir()
    return empty


@pytest.fixture(scope="session")
def predictor(model_dir: Path) -> Predictor:
    """The trained model loaded on its own, to compare the app's answers against."""
    return Predictor.from_dir(model_dir)


#: An admin key for the apps that activate models, and the header that presents it.
ADMIN_KEY = "test-admin-key-0123456789abcdef"
ADMIN = {"X-API-Key": ADMIN_KEY}


@pytest.fixture
def registry_app(model_registry: Path, tmp_path: Path, database_url: str) -> Iterator[Flask]:
    """An app whose MODEL_DIR is a registry of two versions (tests/conftest.py model_registry)."""
    app = build_app(model_registry, tmp_path / "test.db", database_url=database_url, ADMIN_API_KEYS=(ADMIN_KEY,))
    yield app
    close_app(app)


@pytest.fixture
def cheap_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """`flask train` with one candidate instead of all: the command's flow is under test, not the search."""
    from titanic_web import training

    real = training.train
    monkeypatch.setattr(training, "train", lambda **kw: real(**kw, candidates=training.CANDIDATES[:1]))
