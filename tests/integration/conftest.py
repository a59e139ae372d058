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
