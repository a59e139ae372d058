"""titanic-web: a Titanic survival model served as an HTML form and a JSON API."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask

from titanic_web.config import PROJECT_ROOT, load_secret_key, settings_from_env
from titanic_web.extensions import csrf, db, migrate
from titanic_web.recorder import Recorder
from titanic_web.service import PredictionService

__version__ = "0.1.0"


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the application: settings, extensions, model, blueprints, errors, commands."""
    app = Flask(
        __name__,
        instance_relative_config=True,
        template_folder="../templates",
        static_folder="../static",
    )
    app.config.from_mapping(settings_from_env(Path(app.instance_path)))
    app.config.update(config or {})  # the caller's settings (tests) win
    app.json.sort_keys = False  # type: ignore[attr-defined]  # answers keep the documented field order
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = load_secret_key(Path(app.instance_path))
    _prepare_sqlite_folder(app)
    logging.basicConfig(level=app.config["LOG_LEVEL"], format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    db.init_app(app)
    migrate.init_app(app, db, directory=str(PROJECT_ROOT / "migrations"))
    csrf.init_app(app)
    _load_model(app)
    _register_blueprints(app)
    _register_error_handlers(app)
    _register_commands(app)
    return app


def _prepare_sqlite_folder(app: Flask) -> None:
    """Create instance/ (home of the default SQLite file) so the database can be opened."""
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)


def _load_model(app: Flask) -> None:
    service = PredictionService.from_model_dir(Path(app.config["MODEL_DIR"]), recorder=Recorder())
    if service.model_error:
        app.logger.warning("model not loaded: %s", service.model_error)
    else:
        app.logger.info("model %s loaded from %s", service.predictor.version, app.config["MODEL_DIR"])  # type: ignore[union-attr]
    app.extensions["titanic"] = service


def _register_blueprints(app: Flask) -> None:
    from titanic_web import api, web

    app.register_blueprint(web.bp)
    app.register_blueprint(api.bp, url_prefix="/api")
    csrf.exempt(api.bp)  # programs authenticate differently; the form keeps CSRF


def _register_error_handlers(app: Flask) -> None:
    from titanic_web.errors import register

    register(app)


def _register_commands(app: Flask) -> None:
    from titanic_web.cli import register

    register(app)


def get_service(app: Flask) -> PredictionService:
    """Return the app's prediction service (model + recorder)."""
    service: PredictionService = app.extensions["titanic"]
    return service
