"""titanic-web: a Titanic survival model served as an HTML form and a JSON API."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import event
from sqlalchemy.exc import ArgumentError

from titanic_web import security, telemetry
from titanic_web.bodies import WholeBodies
from titanic_web.config import PROJECT_ROOT, ConfigError, engine_options, load_secret_key, settings_from_env
from titanic_web.extensions import SessionInterface, csrf, db, migrate
from titanic_web.recorder import Recorder
from titanic_web.service import PredictionService
from titanic_web.watcher import ModelWatcher

__version__ = "0.1.0"


class TitanicFlask(Flask):
    """Flask, with what it checks of each view and hook once per function rather than per request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Function -> is it a coroutine function, for the functions that live as long as the app
        # (_lives_with_app). A bound method is keyed by its function, so the methods of
        # class-based views, one per request, share one entry. Other nested functions are never
        # kept: some are made per request (after_this_request).
        self._coroutine: dict[Callable[..., Any], bool] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """Flask's answer for ``func``: Flask asks it of every view and hook on every request
        (is it a coroutine function?), and for one function the answer never changes."""
        key = getattr(func, "__func__", func)
        try:
            coroutine = self._coroutine[key]
        except KeyError:
            answer = super().ensure_sync(func)
            if self._lives_with_app(key):
                self._coroutine[key] = answer is not func
            return answer
        except TypeError:  # unhashable: asked each time
            return super().ensure_sync(func)
        return super().ensure_sync(func) if coroutine else func

    def _lives_with_app(self, func: Callable[..., Any]) -> bool:
        """Defined at a module's top level or in a top-level class, or registered on the app as
        a view or a request hook (extensions register closures): not made for one request."""
        if "<locals>" not in getattr(func, "__qualname__", "<locals>"):
            return True
        hooks = (self.before_request_funcs, self.after_request_funcs, self.teardown_request_funcs)
        return func in self.view_functions.values() or any(func in funcs for hook in hooks for funcs in hook.values())


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the application: settings, extensions, model, blueprints, errors, commands."""
    app = TitanicFlask(
        __name__,
        instance_relative_config=True,
        template_folder="../templates",
        static_folder="../static",
    )
    app.config.from_mapping(settings_from_env(Path(app.instance_path)))
    app.config.from_mapping(security.settings_from_env())
    app.config.update(config or {})  # the caller's settings (tests) win
    # Before anything logs: the first use of app.logger adds Flask's own handler unless one is
    # already set up, and every line was then printed twice, once by each.
    logging.basicConfig(level=app.config["LOG_LEVEL"], format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    security.check_production(app)  # before a secret key could be generated
    app.session_interface = SessionInterface()  # one per app: its signer follows this app's key
    app.json.sort_keys = False  # type: ignore[attr-defined]  # answers keep the documented field order
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = load_secret_key(Path(app.instance_path))
    app.config.setdefault(
        "SQLALCHEMY_ENGINE_OPTIONS",
        engine_options(app.config["SQLALCHEMY_DATABASE_URI"], connect_timeout=app.config["DATABASE_CONNECT_TIMEOUT"]),
    )
    _prepare_sqlite_folder(app)

    try:
        db.init_app(app)  # makes the engine: the URL is parsed and its driver imported here
    except (ArgumentError, ValueError, ImportError) as exc:
        # SQLAlchemy's reason, never the URL itself: it may hold a password.
        raise ConfigError(f"DATABASE_URL cannot be used: {type(exc).__name__}: {exc}") from exc
    _configure_sqlite(app)
    migrate.init_app(app, db, directory=str(PROJECT_ROOT / "migrations"))
    csrf.init_app(app)
    _load_model(app)
    telemetry.init_app(app)  # /metrics, X-Request-ID, a JSON log line per request
    _register_blueprints(app)
    _register_error_handlers(app)
    _register_commands(app)
    security.init_app(app)  # last: its rate limits wrap every POST view registered above
    app.wsgi_app = WholeBodies(app.wsgi_app)  # type: ignore[method-assign]  # a body read whole, or a 400
    return app


def _prepare_sqlite_folder(app: Flask) -> None:
    """Create instance/ (home of the default SQLite file) so the database can be opened."""
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)


#: SQLite's page cache per connection (KiB) and its WAL checkpoint interval (pages): see _configure_sqlite.
SQLITE_CACHE_KIB = 16_000
SQLITE_CHECKPOINT_PAGES = 10_000


def _configure_sqlite(app: Flask) -> None:
    """WAL and a busy timeout on every SQLite connection: readers never block the
    writer, and a writer waits for a lock instead of failing with "database is locked"."""
    with app.app_context():
        engine = db.engine
    if engine.dialect.name != "sqlite":
        return
    busy_ms = int(app.config["SQLITE_BUSY_TIMEOUT_MS"])

    @event.listens_for(engine, "connect")
    def _set_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable at checkpoints, far fewer fsyncs
        # A page cache of 16 MB (2 MB by default) keeps the uuid indexes' inner pages, and
        # checkpoints every 10,000 WAL pages (1,000 by default) copy a page rewritten by several
        # batches once. With random (version 4) ids, which land anywhere in the indexes, they took
        # the writer from 32.8 to 18.4 us a row on a 100,000-row table; with the time-ordered ids
        # (titanic_web/ids.py) it spends 4.5 (bench/bench_writer.py, bench/README.md).
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_PAGES}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


def _make_recorder(app: Flask) -> Recorder:
    recorder = Recorder(
        Path(app.config["SPOOL_DIR"]),
        batch_rows=app.config["RECORDER_BATCH_ROWS"],
        flush_interval=app.config["RECORDER_FLUSH_SECONDS"],
        retry_max=app.config["RECORDER_RETRY_MAX_SECONDS"],
        write_timeout=app.config["RECORDER_WRITE_TIMEOUT_SECONDS"],
        fsync=app.config["SPOOL_FSYNC"],
    )
    recorder.init_app(app)
    return recorder


def _load_model(app: Flask) -> None:
    service = PredictionService.from_model_dir(
        Path(app.config["MODEL_DIR"]), recorder=_make_recorder(app), recording=app.config["RECORDING"]
    )
    if not service.recording:
        app.logger.warning("RECORDING is off: predictions are answered but not stored")
    if service.model_error:
        app.logger.warning("model not loaded: %s", service.model_error)
    else:
        app.logger.info("model %s loaded from %s", service.predictor.version, app.config["MODEL_DIR"])  # type: ignore[union-attr]
    app.extensions["titanic"] = service
    # Follows the registry's ACTIVE pointer; its thread starts in each gunicorn worker (gunicorn.conf.py).
    app.extensions["titanic.model_watcher"] = ModelWatcher(
        service, Path(app.config["MODEL_DIR"]), interval=app.config["MODEL_CHECK_SECONDS"]
    )


def _register_blueprints(app: Flask) -> None:
    from titanic_web import api, web

    app.register_blueprint(web.bp)
    app.register_blueprint(api.bp, url_prefix="/api")
    csrf.exempt(api.bp)  # programs authenticate differently; the form keeps CSRF
    from titanic_web.api.docs import page_bp

    app.register_blueprint(page_bp)  # /docs: the API reference page, rendered from /api/openapi.json


def _register_error_handlers(app: Flask) -> None:
    from titanic_web.errors import register

    register(app)


def _register_commands(app: Flask) -> None:
    from titanic_web.cli import register

    register(app)
    from titanic_web.export import export_command

    app.cli.add_command(export_command)  # flask export: the retraining input


def get_service(app: Flask) -> PredictionService:
    """Return the app's prediction service (model + recorder)."""
    service: PredictionService = app.extensions["titanic"]
    return service


def get_model_watcher(app: Flask) -> ModelWatcher:
    """Return the app's model watcher (follows the registry's active version)."""
    watcher: ModelWatcher = app.extensions["titanic.model_watcher"]
    return watcher
