"""The application factory: settings from the environment, the caller's config on top."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.cli import cli as flask_cli

from tests.conftest import SETTINGS_ENV
from titanic_web import create_app, get_service
from titanic_web.config import ConfigError


@pytest.fixture(autouse=True)
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> Path:
    """Point the app's instance folder at tmp_path and start from a clean environment."""
    folder = tmp_path / "instance"
    monkeypatch.setattr(Flask, "auto_find_instance_path", lambda self: str(folder))
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODEL_DIR", str(model_dir))
    return folder


def test_config() -> None:
    assert not create_app().testing
    assert create_app({"TESTING": True}).testing


def test_the_instance_folder_is_prepared(instance: Path) -> None:
    app = create_app()
    assert app.instance_path == str(instance)
    assert instance.is_dir()
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{instance / 'titanic.db'}"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    monkeypatch.setenv("MAX_ROWS", "5")
    app = create_app()
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'env.db'}"
    assert app.config["MAX_ROWS"] == 5


def test_the_callers_config_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    monkeypatch.setenv("MAX_ROWS", "5")
    monkeypatch.setenv("SECRET_KEY", "from-env")
    app = create_app(
        {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'mine.db'}", "MAX_ROWS": 7, "SECRET_KEY": "mine"}
    )
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'mine.db'}"
    assert app.config["MAX_ROWS"] == 7
    assert app.config["SECRET_KEY"] == "mine"


@pytest.mark.parametrize("text", ["abc", "0"])
def test_a_bad_max_rows_stops_the_app(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("MAX_ROWS", text)
    with pytest.raises(ConfigError, match="MAX_ROWS"):
        create_app()


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("nonsense", "ArgumentError: Could not parse SQLAlchemy URL"),
        ("postgres://svc:hunter2@db/titanic", "NoSuchModuleError: Can't load plugin: sqlalchemy.dialects:postgres"),
        ("postgresql+psycopg://svc:hunter2@db:port/titanic", "ValueError: invalid literal for int()"),
        ("mysql://svc:hunter2@db/titanic", "ModuleNotFoundError: No module named 'MySQLdb'"),
    ],
)
def test_an_unusable_database_url_stops_the_app(monkeypatch: pytest.MonkeyPatch, url: str, detail: str) -> None:
    """Named as DATABASE_URL, with SQLAlchemy's reason and without the URL (it may hold a password)."""
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(ConfigError) as info:
        create_app()
    message = str(info.value)
    assert message.startswith("DATABASE_URL cannot be used: ") and detail in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("LOG_LEVEL", "loud", "Error: LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'loud'"),
        ("DATABASE_URL", "nonsense", "Error: DATABASE_URL cannot be used: ArgumentError"),
    ],
)
def test_a_flask_command_with_a_bad_setting_says_which_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    """What an operator sees from `flask --app titanic_web recorder status` with a bad setting."""
    monkeypatch.setenv(variable, value)

    result = CliRunner().invoke(flask_cli, ["--app", "titanic_web", "recorder", "status"])

    assert result.exit_code == 1, result.output
    assert result.output.startswith(message), result.output
    assert "Traceback" not in result.output


def test_secret_key_from_the_environment_wins_over_the_file(instance: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    instance.mkdir()
    (instance / "secret_key").write_text("from-file")
    monkeypatch.setenv("SECRET_KEY", "from-env")
    assert create_app().config["SECRET_KEY"] == "from-env"


def test_without_a_secret_key_every_app_shares_the_generated_one(instance: Path) -> None:
    first = create_app().config["SECRET_KEY"]
    second = create_app().config["SECRET_KEY"]
    assert first and first == second
    path = instance / "secret_key"
    assert path.read_text() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_empty_key_file_stops_the_app(instance: Path) -> None:
    instance.mkdir()
    (instance / "secret_key").write_text("")
    with pytest.raises(ConfigError, match="secret_key is empty"):
        create_app()


def test_the_model_is_loaded(model_dir: Path) -> None:
    service = get_service(create_app())
    assert service.predictor is not None
    assert service.model_error is None
    assert service.require_predictor().version == json.loads((model_dir / "model.json").read_text())["version"]


def test_a_missing_model_is_kept_as_an_error_not_raised(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "no-model"))
    service = get_service(create_app())
    assert service.predictor is None
    assert service.model_error and "flask --app titanic_web train" in service.model_error


def test_the_api_and_the_form_are_registered() -> None:
    app = create_app()
    assert {"web", "api"} <= set(app.blueprints)
    assert any(rule.rule.startswith("/api/") for rule in app.url_map.iter_rules())


class _View:
    """A class-based view's shape: a new instance, so a new bound method, per request."""

    def get(self) -> str:
        return "ok"


def test_ensure_sync_answers_as_flask_does_and_keeps_only_what_lives_with_the_app() -> None:
    """Flask's check of each view and hook is kept per function; per-request closures are not."""
    app = create_app()

    def registered() -> str:
        return "ok"

    async def coroutine_view() -> str:
        return "ok"

    app.add_url_rule("/test-view", "test_view", registered)
    assert app.ensure_sync(registered) is registered and registered in app._coroutine  # a registered view
    for _ in range(2):  # as Flask: async views need its [async] extra, asked and then remembered
        with pytest.raises(RuntimeError, match="async"):
            app.ensure_sync(coroutine_view)
    assert coroutine_view not in app._coroutine  # nested and not registered
    kept = len(app._coroutine)
    views = [_View() for _ in range(10)]
    assert [app.ensure_sync(v.get) for v in views] == [v.get for v in views]
    closures = [(lambda n=n: n) for n in range(50)]  # after_this_request makes one per request
    assert [app.ensure_sync(c) for c in closures] == closures
    assert _View.get in app._coroutine and len(app._coroutine) == kept + 1  # one entry for all, no closure
    assert app.test_client().get("/test-view").get_data(as_text=True) == "ok"


def test_a_warning_while_the_app_is_built_is_logged_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """APP_ENV=production with the rate limits counted in memory (the Docker image's default)
    logs a warning while the app is built. It came before logging was set up, so Flask added its
    own handler to the app's logger, and every line of the app was printed twice from then on."""
    import logging

    from flask.logging import default_handler

    monkeypatch.setattr(logging.root, "handlers", [])  # as in a fresh process; restored afterwards
    app_logger = logging.getLogger("titanic_web")
    monkeypatch.setattr(app_logger, "handlers", [])
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("SECRET_KEY", "a production key")

    app = create_app()

    assert logging.root.handlers, "logging was not set up"
    assert default_handler not in app.logger.handlers, "the app's lines would print twice"
