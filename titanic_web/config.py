"""Settings from the environment, with safe defaults; every one is listed in the README."""

from __future__ import annotations

import math
import os
import secrets
import threading
from pathlib import Path
from typing import Any

import click

#: The project checkout: model/ lives beside the package.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: The model registry: one folder per trained version and an ACTIVE pointer (titanic_web/registry.py).
DEFAULT_MODEL_DIR = PROJECT_ROOT / "model" / "registry"
DEFAULT_TRAIN_DATA = PROJECT_ROOT / "model" / "data" / "train.csv"
#: LOG_LEVEL's values: the names both logging and gunicorn know (gunicorn takes any other for INFO).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(click.ClickException):
    """A setting has a value that cannot be used.

    A click exception so that a ``flask`` command, whose app could not be built, prints
    ``Error: <the message>`` and exits with status 1, not a traceback; elsewhere (gunicorn,
    tests) it is an exception like any other.
    """


def _env_text(name: str) -> str | None:
    """The variable's value, or None when it is unset or blank (the default applies)."""
    text = os.environ.get(name)
    return None if text is None or text.strip() == "" else text


def _int_env(name: str, default: int, *, minimum: int = 1) -> int:
    text = _env_text(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {text!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


#: The shortest tick or retry pause of the recorder's writer: 0 would make it a busy loop (a core
#: spent on nothing, or a thousand connection attempts a second against a database that is down).
MIN_WAIT_SECONDS = 0.01


def _float_env(name: str, default: float, *, minimum: float = 0.0) -> float:
    """A number of seconds (or hours); threading's waits refuse more than TIMEOUT_MAX seconds.
    ``minimum`` keeps a loop's wait from becoming a busy loop."""
    text = _env_text(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {text!r}") from None
    if not math.isfinite(value):  # NaN passes every comparison: a wait of NaN seconds returns at once
        raise ConfigError(f"{name} must be a finite number, got {text!r}")
    if value > threading.TIMEOUT_MAX:
        raise ConfigError(f"{name} must be at most {threading.TIMEOUT_MAX:.0f}, got {text!r}")
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {value}")
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum:g}, got {value:g}")
    return value


def _choice_env(name: str, default: str, choices: tuple[str, ...]) -> str:
    """One of choices, in any case and with spaces around it allowed."""
    text = _env_text(name)
    if text is None:
        return default
    value = text.strip().upper()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {text!r}")
    return value


def _path_env(name: str) -> Path | None:
    text = _env_text(name)
    return None if text is None else Path(text)


def _bool_env(name: str, default: bool) -> bool:
    text = _env_text(name)
    if text is None:
        return default
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {text!r}")


def load_secret_key(instance_path: Path) -> str:
    """Return SECRET_KEY from the environment, or one generated once and kept in instance/.

    Every gunicorn worker reads the same file, so sessions and CSRF tokens made by
    one worker are valid in all of them; creation is atomic, so racing workers agree.
    """
    from_env = _env_text("SECRET_KEY")  # blank is unset: a key of spaces would sign everything
    if from_env is not None:
        return from_env
    path = instance_path / "secret_key"
    if not path.exists():
        instance_path.mkdir(parents=True, exist_ok=True)
        tmp = instance_path / f".secret_key.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)  # fails if another worker got there first: theirs wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    key = path.read_text().strip()
    if not key:
        raise ConfigError(f"{path} is empty: delete it to have a new key generated, or set SECRET_KEY")
    return key


def settings_from_env(instance_path: Path) -> dict[str, Any]:
    """Read every setting from the environment; the defaults suit a local install."""
    database_url = _env_text("DATABASE_URL") or f"sqlite:///{instance_path / 'titanic.db'}"
    return {
        "SECRET_KEY": None,  # filled in by create_app unless the caller's config has one
        "SQLALCHEMY_DATABASE_URI": database_url,
        "MODEL_DIR": _path_env("MODEL_DIR") or DEFAULT_MODEL_DIR,
        # How often each worker looks at the registry's ACTIVE pointer (one stat); 0 never switches live.
        "MODEL_CHECK_SECONDS": _float_env("MODEL_CHECK_SECONDS", 1.0),
        "TRAIN_DATA": _path_env("TRAIN_DATA") or DEFAULT_TRAIN_DATA,
        "MAX_ROWS": _int_env("MAX_ROWS", 100_000),
        "BATCH_CHUNK_ROWS": _int_env("BATCH_CHUNK_ROWS", 2000),
        # The batch page's submission files, kept for download under unguessable names.
        "BATCH_DIR": _path_env("BATCH_DIR") or instance_path / "batches",
        "BATCH_KEEP_HOURS": _float_env("BATCH_KEEP_HOURS", 24.0),
        "MAX_CONTENT_LENGTH": _int_env("MAX_CONTENT_LENGTH", 32 * 1024 * 1024),
        # Flask-WTF's default token lifetime is an hour; a form left open longer gets
        # a friendly "submit again" page, never a bare 400.
        "WTF_CSRF_TIME_LIMIT": _int_env("CSRF_TIME_LIMIT", 3600),
        "LOG_LEVEL": _choice_env("LOG_LEVEL", "INFO", LOG_LEVELS),
        # Off only for benchmarks and dry runs: predictions are then answered and not stored.
        "RECORDING": _bool_env("RECORDING", True),
        "SPOOL_DIR": _path_env("SPOOL_DIR") or instance_path / "spool",
        "SPOOL_FSYNC": _bool_env("SPOOL_FSYNC", False),
        "RECORDER_BATCH_ROWS": _int_env("RECORDER_BATCH_ROWS", 1000),
        # One transaction per second at most under steady load: a commit (and its WAL pages)
        # costs about as much as 200 rows, so fewer, fuller batches cost the workers less.
        "RECORDER_FLUSH_SECONDS": _float_env("RECORDER_FLUSH_SECONDS", 1.0, minimum=MIN_WAIT_SECONDS),
        "RECORDER_RETRY_MAX_SECONDS": _float_env("RECORDER_RETRY_MAX_SECONDS", 30.0, minimum=MIN_WAIT_SECONDS),
        "RECORDER_SHUTDOWN_SECONDS": _float_env("RECORDER_SHUTDOWN_SECONDS", 10.0),
        # The longest a batch may wait on PostgreSQL (a statement, or a lock another session holds);
        # past it the batch is rolled back, stays spooled and is retried. 0: no limit.
        "RECORDER_WRITE_TIMEOUT_SECONDS": _float_env("RECORDER_WRITE_TIMEOUT_SECONDS", 30.0),
        "SQLITE_BUSY_TIMEOUT_MS": _int_env("SQLITE_BUSY_TIMEOUT_MS", 5000, minimum=0),
        "DATABASE_CONNECT_TIMEOUT": _int_env("DATABASE_CONNECT_TIMEOUT", 5),
        # Set (by gunicorn.conf.py, or by hand): /metrics sums every process's values kept in files
        # there; unset: one process, values in memory.
        "PROMETHEUS_MULTIPROC_DIR": _path_env("PROMETHEUS_MULTIPROC_DIR"),
        # Drift on the dashboard: fewer served rows than DRIFT_MIN_ROWS in the window say
        # "not enough data"; at most DRIFT_MAX_ROWS (the newest) are read.
        "DRIFT_MIN_ROWS": _int_env("DRIFT_MIN_ROWS", 200),
        "DRIFT_MAX_ROWS": _int_env("DRIFT_MAX_ROWS", 50_000),
        "HISTORY_PAGE_ROWS": _int_env("HISTORY_PAGE_ROWS", 50),
        "EXPORT_CHUNK_ROWS": _int_env("EXPORT_CHUNK_ROWS", 5000),
    }


def engine_options(database_url: str, *, connect_timeout: int) -> dict[str, Any]:
    """SQLAlchemy engine options for a URL; set before init_app, which reads them once.

    Server databases get a connection check before each checkout (a restarted
    server is noticed, not failed on) and a connect timeout (a down server
    fails fast instead of hanging a writer).
    """
    if database_url.startswith("sqlite"):
        return {}
    options: dict[str, Any] = {"pool_pre_ping": True, "pool_recycle": 1800}
    if database_url.startswith("postgresql"):
        options["connect_args"] = {"connect_timeout": connect_timeout}
    return options
