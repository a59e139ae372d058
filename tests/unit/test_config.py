"""Settings from the environment and the secret key kept in instance/."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.conftest import SETTINGS_ENV
from titanic_web import config
from titanic_web.config import ConfigError, load_secret_key, settings_from_env


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start from no settings at all, whatever the shell running the tests has."""
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)


def test_defaults_suit_a_local_install(tmp_path: Path) -> None:
    settings = settings_from_env(tmp_path)
    assert settings["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'titanic.db'}"
    assert settings["MODEL_DIR"] == config.PROJECT_ROOT / "model" / "registry"
    assert settings["MODEL_CHECK_SECONDS"] == 1.0
    assert settings["TRAIN_DATA"] == config.PROJECT_ROOT / "model" / "data" / "train.csv"
    assert settings["MAX_ROWS"] == 100_000
    assert settings["BATCH_CHUNK_ROWS"] == 2000
    assert settings["MAX_CONTENT_LENGTH"] == 32 * 1024 * 1024
    assert settings["WTF_CSRF_TIME_LIMIT"] == 3600
    assert settings["LOG_LEVEL"] == "INFO"
    assert settings["SECRET_KEY"] is None


def test_settings_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@db/titanic")
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "m"))
    monkeypatch.setenv("TRAIN_DATA", str(tmp_path / "t.csv"))
    monkeypatch.setenv("MAX_ROWS", " 25 ")
    monkeypatch.setenv("MAX_CONTENT_LENGTH", "1024")
    monkeypatch.setenv("CSRF_TIME_LIMIT", "60")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    settings = settings_from_env(tmp_path)
    assert settings["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://u@db/titanic"
    assert settings["MODEL_DIR"] == tmp_path / "m"
    assert settings["TRAIN_DATA"] == tmp_path / "t.csv"
    assert settings["MAX_ROWS"] == 25
    assert settings["MAX_CONTENT_LENGTH"] == 1024
    assert settings["WTF_CSRF_TIME_LIMIT"] == 60
    assert settings["LOG_LEVEL"] == "DEBUG"


@pytest.mark.parametrize("text", ["", " \t"])
@pytest.mark.parametrize(
    "name",
    [
        "DATABASE_URL",
        "MODEL_DIR",
        "TRAIN_DATA",
        "BATCH_DIR",
        "SPOOL_DIR",
        "MAX_ROWS",
        "LOG_LEVEL",
        "MODEL_CHECK_SECONDS",
        "RECORDER_FLUSH_SECONDS",
    ],
)
def test_an_empty_variable_means_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, text: str
) -> None:
    defaults = settings_from_env(tmp_path)
    monkeypatch.setenv(name, text)
    assert settings_from_env(tmp_path) == defaults


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("MAX_ROWS", "abc", "MAX_ROWS must be a whole number, got 'abc'"),
        ("MAX_ROWS", "1.5", "MAX_ROWS must be a whole number, got '1.5'"),
        ("MAX_ROWS", "0", "MAX_ROWS must be at least 1, got 0"),
        ("MAX_ROWS", "-3", "MAX_ROWS must be at least 1, got -3"),
        ("MAX_CONTENT_LENGTH", "big", "MAX_CONTENT_LENGTH must be a whole number"),
        ("CSRF_TIME_LIMIT", "0", "CSRF_TIME_LIMIT must be at least 1"),
        ("MODEL_CHECK_SECONDS", "soon", "MODEL_CHECK_SECONDS must be a number, got 'soon'"),
        ("RECORDER_FLUSH_SECONDS", "-1", "RECORDER_FLUSH_SECONDS must not be negative, got -1"),
        # 0 made the writer a busy loop: a core spent idle, or a thousand retries a second
        ("RECORDER_FLUSH_SECONDS", "0", "RECORDER_FLUSH_SECONDS must be at least 0.01, got 0"),
        ("RECORDER_RETRY_MAX_SECONDS", "0.001", "RECORDER_RETRY_MAX_SECONDS must be at least 0.01, got 0.001"),
        # Not a number of seconds: NaN passes every comparison (the writer would spin), and
        # threading's waits refuse infinity and anything above threading.TIMEOUT_MAX.
        ("MODEL_CHECK_SECONDS", "nan", "MODEL_CHECK_SECONDS must be a finite number, got 'nan'"),
        ("RECORDER_FLUSH_SECONDS", "NaN", "RECORDER_FLUSH_SECONDS must be a finite number, got 'NaN'"),
        ("MODEL_CHECK_SECONDS", "inf", "MODEL_CHECK_SECONDS must be a finite number, got 'inf'"),
        ("RECORDER_RETRY_MAX_SECONDS", "-inf", "RECORDER_RETRY_MAX_SECONDS must be a finite number"),
        ("RECORDER_SHUTDOWN_SECONDS", "Infinity", "RECORDER_SHUTDOWN_SECONDS must be a finite number"),
        ("BATCH_KEEP_HOURS", "nan", "BATCH_KEEP_HOURS must be a finite number, got 'nan'"),
        ("MODEL_CHECK_SECONDS", "1e10", "MODEL_CHECK_SECONDS must be at most 9223372036, got '1e10'"),
    ],
)
def test_a_bad_number_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, text: str, message: str
) -> None:
    monkeypatch.setenv(name, text)
    with pytest.raises(ConfigError) as info:
        settings_from_env(tmp_path)
    assert message in str(info.value)


def test_float_settings_take_decimals_and_exponents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_CHECK_SECONDS", " 0.25 ")
    monkeypatch.setenv("RECORDER_FLUSH_SECONDS", "1e-2")
    monkeypatch.setenv("BATCH_KEEP_HOURS", "1e3")
    monkeypatch.setenv("RECORDER_WRITE_TIMEOUT_SECONDS", "0")  # no limit
    settings = settings_from_env(tmp_path)
    assert settings["MODEL_CHECK_SECONDS"] == 0.25
    assert settings["RECORDER_FLUSH_SECONDS"] == 0.01
    assert settings["RECORDER_WRITE_TIMEOUT_SECONDS"] == 0.0
    assert settings["BATCH_KEEP_HOURS"] == 1000.0


@pytest.mark.parametrize(("text", "level"), [("debug", "DEBUG"), (" Warning ", "WARNING"), ("CRITICAL", "CRITICAL")])
def test_log_level_takes_any_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, level: str) -> None:
    monkeypatch.setenv("LOG_LEVEL", text)
    assert settings_from_env(tmp_path)["LOG_LEVEL"] == level


@pytest.mark.parametrize("text", ["verbose", "10", "warn", "NOTSET"])
def test_an_unknown_log_level_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    """Only the names both logging and gunicorn know: gunicorn would take any other for INFO."""
    monkeypatch.setenv("LOG_LEVEL", text)
    with pytest.raises(ConfigError) as info:
        settings_from_env(tmp_path)
    assert str(info.value) == f"LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {text!r}"


# --- the secret key ------------------------------------------------------------


def test_secret_key_from_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret_key").write_text("from-file")
    monkeypatch.setenv("SECRET_KEY", "from-env")
    assert load_secret_key(tmp_path) == "from-env"
    assert (tmp_path / "secret_key").read_text() == "from-file"


def test_secret_key_from_the_environment_writes_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_KEY", "from-env")
    load_secret_key(tmp_path / "instance")
    assert not (tmp_path / "instance" / "secret_key").exists()


def test_secret_key_is_generated_once_and_kept(tmp_path: Path) -> None:
    instance = tmp_path / "instance"  # not there yet: it is created
    key = load_secret_key(instance)
    path = instance / "secret_key"
    assert len(key) == 64 and int(key, 16) >= 0  # 32 random bytes in hex
    assert path.read_text() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret_key(instance) == key
    assert path.read_text() == key
    assert os.listdir(instance) == ["secret_key"]  # no temporary file left behind


def test_secret_keys_differ_between_installs(tmp_path: Path) -> None:
    assert load_secret_key(tmp_path / "one") != load_secret_key(tmp_path / "two")


@pytest.mark.parametrize("text", ["", " ", "\t\n"])
def test_an_empty_environment_key_falls_back_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    (tmp_path / "secret_key").write_text("from-file\n")
    monkeypatch.setenv("SECRET_KEY", text)
    assert load_secret_key(tmp_path) == "from-file"


def test_a_blank_environment_key_is_generated_like_an_unset_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_KEY", " ")
    key = load_secret_key(tmp_path)
    assert len(key) == 64 and (tmp_path / "secret_key").read_text() == key


@pytest.mark.parametrize("text", ["", " \n"])
def test_an_empty_key_file_is_a_config_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "secret_key").write_text(text)
    with pytest.raises(ConfigError, match="is empty") as info:
        load_secret_key(tmp_path)
    assert str(tmp_path / "secret_key") in str(info.value)


def test_a_worker_that_loses_the_race_uses_the_winners_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def link(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        Path(dst).write_text("the-other-workers-key")  # another worker got there first
        raise FileExistsError(dst)

    monkeypatch.setattr(config.os, "link", link)
    assert load_secret_key(tmp_path) == "the-other-workers-key"
    assert os.listdir(tmp_path) == ["secret_key"]
