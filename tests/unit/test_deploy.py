"""The deployment files: the Dockerfile, .dockerignore and the CI workflow.

No Docker engine runs here, so the image is checked by reading the Dockerfile: it must run
the same commands as `make run`, as a user other than root, with a healthcheck that really
asks /api/health (the check's own command is run against a stand-in server). The workflow
must run `make test` beside a PostgreSQL service the tests can reach.
"""

from __future__ import annotations

import fnmatch
import http.server
import io
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from sqlalchemy.engine import make_url

from titanic_web.config import PROJECT_ROOT

DOCKERFILE = PROJECT_ROOT / "Dockerfile"
DOCKERIGNORE = PROJECT_ROOT / ".dockerignore"
WORKFLOW = PROJECT_ROOT / ".github" / "workflows" / "ci.yml"

#: What the image needs from the checkout: the package and everything config.py finds beside it.
NEEDED_IN_IMAGE = (
    "setup.cfg",
    "pyproject.toml",
    "README.md",
    "wsgi.py",
    "gunicorn.conf.py",
    "titanic_web/__init__.py",
    "titanic_web/api/routes.py",
    "templates/base.html",
    "static",
    "migrations/env.py",
    "model/data/train.csv",
)
#: What must never reach the image: local environments, databases, spools, secrets, models.
KEPT_OUT_OF_IMAGE = (
    ".git",
    ".venv",
    "instance",
    "instance/secret_key",
    "instance/spool/segment",
    "model/artifacts/model.joblib",
    "model/registry",
    "titanic_web/__pycache__/cli.cpython-311.pyc",
)


# --- reading the files ------------------------------------------------------------------------


def dockerfile() -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO(DOCKERFILE.read_bytes()))


def instructions(name: str) -> list[str]:
    """The values of every instruction of this name, in order (continuation lines joined)."""
    return [entry["value"] for entry in dockerfile().structure if entry["instruction"] == name]


def shell_commands(script: str) -> list[list[str]]:
    """The commands of a shell line joined by &&, as argument lists, without a leading `exec`."""
    commands = []
    for part in script.split("&&"):
        words = shlex.split(part)
        commands.append(words[1:] if words[:1] == ["exec"] else words)
    return commands


def make_commands(target: str) -> list[list[str]]:
    """The commands `make TARGET` would run (make -n runs none), programs named without .venv/bin/."""
    out = subprocess.run(
        ["make", "-n", "--no-print-directory", target],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    commands = []
    for line in out.splitlines():
        words = shlex.split(line)
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):  # VAR=value before the program
            words = words[1:]
        if words and words[0].startswith(".venv/bin/"):
            commands.append([words[0].removeprefix(".venv/bin/"), *words[1:]])
    return commands


def ignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line.lstrip("/") for line in lines if line and not line.startswith("#")]


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps this path (or a folder above it) out of the build context.

    fnmatch's `*` also crosses `/`, so this errs towards "ignored": a needed file it calls
    ignored is worth a look. The files use no `!` exceptions; a test below keeps it so.
    """
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, pattern.removeprefix("**/"))
        for c in candidates
        for pattern in ignore_patterns()
    )


def workflow() -> dict[Any, Any]:
    loaded: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def make_test_job() -> tuple[str, dict[str, Any]]:
    """The workflow's job that runs `make test`."""
    jobs = [
        (name, job)
        for name, job in workflow()["jobs"].items()
        if any(step.get("run", "").strip() == "make test" for step in job["steps"])
    ]
    assert len(jobs) == 1, f"one job should run `make test`, found {[name for name, _ in jobs]}"
    return jobs[0]


# --- the Dockerfile ---------------------------------------------------------------------------


def test_the_image_is_slim_python_311_on_debian_bookworm() -> None:
    assert dockerfile().baseimage == "python:3.11-slim-bookworm"


def test_the_server_runs_as_a_user_other_than_root() -> None:
    structure = [entry["instruction"] for entry in dockerfile().structure]
    users = instructions("USER")
    assert users, "no USER: the server would run as root"
    user = users[-1].split(":")[0].strip()
    assert user not in ("root", "0")
    # Numeric, so an orchestrator can tell it is not root without the image's /etc/passwd.
    assert user.isdigit()
    last_user = len(structure) - 1 - structure[::-1].index("USER")
    assert last_user < structure.index("CMD") and last_user < structure.index("HEALTHCHECK")


def test_the_image_installs_and_trains_as_make_does() -> None:
    runs = [shell_commands(value) for value in instructions("RUN")]
    commands = [command for run in runs for command in run]
    # Editable, as the Makefile installs it (a cache mount option may precede the command).
    assert any(command[-4:] == ["pip", "install", "-e", "."] for command in commands)
    train = [command for command in make_commands("model") if command[-1:] == ["train"]]
    assert train == [["flask", "--app", "titanic_web", "train"]]
    # The build step sets a throwaway key in front of the command: compare from the program on.
    assert any(command[-len(train[0]) :] == train[0] for command in commands), "the image trains no model"


def test_the_image_starts_the_way_make_run_serves() -> None:
    cmd = json.loads(instructions("CMD")[-1])
    assert cmd[:2] == ["sh", "-c"]
    started = shell_commands(cmd[2])
    served = [
        command for command in make_commands("run") if command[0] in ("flask", "gunicorn") and command[-1] != "train"
    ]
    assert served == [["flask", "--app", "titanic_web", "init-db"], ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]]
    assert started == served
    # exec: gunicorn becomes PID 1 and gets `docker stop`'s SIGTERM, so its workers drain the spool.
    assert cmd[2].split("&&")[-1].split()[0] == "exec"


#: What gunicorn.conf.py sets in the environment of the process that reads it.
GUNICORN_CONF_SETS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "PROMETHEUS_MULTIPROC_DIR")


def gunicorn_settings(monkeypatch: pytest.MonkeyPatch, **variables: str | None) -> dict[str, Any]:
    """gunicorn.conf.py's settings, read with these variables (None: unset), as gunicorn reads it.

    What it sets in the environment is undone after the test, absent variables included:
    ``delenv(name, raising=False)`` of an absent one records nothing to restore, and a
    PROMETHEUS_MULTIPROC_DIR left pointing into the checkout made later apps of the same
    test process write their metrics there.
    """
    for name in GUNICORN_CONF_SETS:
        monkeypatch.setenv(name, "")  # recorded: monkeypatch restores the value, or its absence
        monkeypatch.delenv(name)
    for name, value in variables.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return runpy.run_path(str(PROJECT_ROOT / "gunicorn.conf.py"))


def test_gunicorn_binds_all_interfaces_on_the_exposed_port(monkeypatch: pytest.MonkeyPatch) -> None:
    env = dockerfile().envs
    assert env["HOST"] == "0.0.0.0"
    assert instructions("EXPOSE") == [env["PORT"]]
    settings = gunicorn_settings(monkeypatch, **env)
    assert settings["bind"] == f"0.0.0.0:{env['PORT']}"


@pytest.mark.parametrize(
    ("variables", "bind", "workers", "timeout"),
    [
        ({}, "127.0.0.1:8000", 2, 60),
        # blank is unset, as for the app's settings: a blank HOST was ':8000', every interface
        ({"HOST": "", "PORT": " ", "GUNICORN_TIMEOUT": ""}, "127.0.0.1:8000", 2, 60),
        ({"HOST": "10.0.0.5", "PORT": "9000", "WEB_CONCURRENCY": "4", "GUNICORN_TIMEOUT": "0"}, "10.0.0.5:9000", 4, 0),
    ],
)
def test_gunicorn_reads_its_variables_as_the_app_reads_settings(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], bind: str, workers: int, timeout: int
) -> None:
    unset = dict.fromkeys(("HOST", "PORT", "WEB_CONCURRENCY", "GUNICORN_TIMEOUT"))
    settings = gunicorn_settings(monkeypatch, **(unset | variables))
    assert (settings["bind"], settings["workers"], settings["timeout"]) == (bind, workers, timeout)


@pytest.mark.parametrize(
    ("name", "text"), [("WEB_CONCURRENCY", "0"), ("GUNICORN_TIMEOUT", "-1"), ("GUNICORN_TIMEOUT", "1m")]
)
def test_gunicorn_refuses_an_unusable_number_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, text: str
) -> None:
    with pytest.raises(SystemExit, match=rf"^{name} must be a whole number of at least \d, got '{re.escape(text)}'$"):
        gunicorn_settings(monkeypatch, **{name: text})


@pytest.mark.parametrize(
    ("text", "level"),
    [(None, "INFO"), ("", "INFO"), (" ", "INFO"), ("debug", "DEBUG"), ("WARNING", "WARNING"), (" Error ", "ERROR")],
)
def test_gunicorn_logs_at_log_level_and_at_info_when_it_is_blank(
    monkeypatch: pytest.MonkeyPatch, text: str | None, level: str
) -> None:
    """The app (config.py) takes a blank LOG_LEVEL for INFO; gunicorn must read it the same way."""
    import logging

    from gunicorn.config import Config
    from gunicorn.glogging import Logger

    settings = gunicorn_settings(monkeypatch, LOG_LEVEL=text)
    cfg = Config()
    cfg.set("loglevel", settings["loglevel"])
    assert Logger(cfg).loglevel == logging.getLevelName(level)


def test_each_worker_pins_thread_pools_freezes_the_app_and_sets_the_switch_interval_and_collector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """post_worker_init on a worker whose app has no recorder or watcher: what is left is the process's set-up."""
    import gc
    import sys
    from types import SimpleNamespace

    import threadpoolctl

    settings = gunicorn_settings(monkeypatch)
    pinned: list[int] = []
    switched: list[float] = []
    frozen: list[bool] = []
    monkeypatch.setattr(threadpoolctl, "threadpool_limits", lambda limits: pinned.append(limits))
    monkeypatch.setattr(sys, "setswitchinterval", lambda seconds: switched.append(seconds))
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    thresholds: list[tuple[int, ...]] = []
    monkeypatch.setattr(gc, "set_threshold", lambda *values: thresholds.append(values))
    settings["post_worker_init"](SimpleNamespace(wsgi=SimpleNamespace(extensions={})))
    assert pinned == [1]
    assert switched == [settings["SWITCH_INTERVAL_SECONDS"]] == [0.05]
    assert frozen == [True]
    assert thresholds == [(settings["GC_YOUNG_THRESHOLD"],)] == [(50_000,)]


def test_production_mode_and_no_secret_in_the_image() -> None:
    env = dockerfile().envs
    assert env["APP_ENV"] == "production"
    assert "SECRET_KEY" not in env
    assert not any(value.split("=")[0].strip() == "SECRET_KEY" for value in instructions("ARG"))


def healthcheck_command() -> list[str]:
    value = instructions("HEALTHCHECK")[-1]
    options, _, command = value.partition(" CMD ")
    assert options.split()[0].startswith("--"), options
    argv: list[str] = json.loads(command)
    return argv


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200  # what /api/health answers; every other path is 404

    def do_GET(self) -> None:
        code = self.status if self.path == "/api/health" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test's output quiet."""


@contextmanager
def health_server(status: int) -> Iterator[int]:
    """A stand-in for the app on a free 127.0.0.1 port whose /api/health answers `status`."""
    handler = type("Handler", (_Health,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_healthcheck(port: int) -> int:
    argv = healthcheck_command()
    assert argv[0] == "python", "slim images have no curl: the check must use python"
    env = {**os.environ, "PORT": str(port)}
    return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30).returncode


def test_the_healthcheck_passes_when_api_health_answers_200() -> None:
    with health_server(200) as port:
        assert run_healthcheck(port) == 0


@pytest.mark.parametrize("status", [404, 500, 503])
def test_the_healthcheck_fails_when_api_health_does_not_answer_200(status: int) -> None:
    with health_server(status) as port:
        assert run_healthcheck(port) != 0


def test_the_healthcheck_fails_when_nothing_listens() -> None:
    with health_server(200) as port:
        pass  # the port was free a moment ago and nothing listens on it now
    assert run_healthcheck(port) != 0


# --- .dockerignore ----------------------------------------------------------------------------


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    assert not any(pattern.startswith("!") for pattern in ignore_patterns())
    for path in KEPT_OUT_OF_IMAGE:
        assert ignored(path), f"{path} would be copied into the image"


def test_dockerignore_keeps_what_the_image_needs() -> None:
    for path in NEEDED_IN_IMAGE:
        assert (PROJECT_ROOT / path).exists(), path
        assert not ignored(path), f".dockerignore leaves {path} out, and the image needs it"


# --- the CI workflow --------------------------------------------------------------------------


def test_the_workflow_runs_on_push_and_pull_request() -> None:
    loaded = workflow()
    triggers = loaded.get("on", loaded.get(True))  # YAML 1.1 reads a bare `on` key as true
    assert {"push", "pull_request"} <= set(triggers)


def test_the_workflow_runs_make_test_in_the_image_base_with_postgresql() -> None:
    _, job = make_test_job()
    # The tests run on the Dockerfile's base: Debian's chromium for the browser tests, and the
    # same Python and system the image serves with.
    assert job["container"]["image"] == dockerfile().baseimage
    services = job["services"]
    name, postgres = next((n, s) for n, s in services.items() if s["image"].split(":")[0] == "postgres")
    assert postgres["env"] == {"POSTGRES_USER": "postgres", "POSTGRES_HOST_AUTH_METHOD": "trust", "POSTGRES_DB": "test"}
    assert "--health-cmd" in postgres["options"], "without a health check the tests may start before the server"
    # In a container job a service is reached by its name: the URL the tests read must say so.
    url = make_url(job["env"]["TEST_POSTGRES_URL"])
    assert (url.drivername, url.username, url.host, url.port, url.database) == (
        "postgresql+psycopg",
        "postgres",
        name,
        5432,
        "test",
    )


def test_the_workflow_offers_redis_and_caches_pip() -> None:
    _, job = make_test_job()
    name = next(n for n, s in job["services"].items() if s["image"].split(":")[0] == "redis")
    url = make_url(job["env"]["TEST_REDIS_URL"])  # read by tests/conftest.py's redis_limits
    assert (url.drivername, url.host, url.port) == ("redis", name, 6379)
    cache = [step for step in job["steps"] if step.get("uses", "").startswith("actions/cache@")]
    assert [step["with"]["path"] for step in cache] == [job["env"]["PIP_CACHE_DIR"]]
    assert "setup.cfg" in cache[0]["with"]["key"]
