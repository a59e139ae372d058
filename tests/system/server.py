"""A real gunicorn server for the system tests: start, wait until it answers, stop for sure.

The server runs `gunicorn -c gunicorn.conf.py -w 2 wsgi:app` from a project folder
(the checkout, or a copy of it), on a free 127.0.0.1 port, with its stdout and stderr
(access log, error log, application log) captured in one file that failures quote.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import requests

from tests.conftest import SETTINGS_ENV

#: The virtualenv's executables: the same environment that runs pytest.
BIN = Path(sys.executable).parent
GUNICORN = BIN / "gunicorn"
FLASK = BIN / "flask"

START_TIMEOUT = 30.0  # seconds for the server to answer /api/health
STOP_TIMEOUT = 20.0  # seconds for a graceful stop after SIGTERM
INIT_DB_TIMEOUT = 120.0

#: Settings the tests decide; inherited values of these must not leak into the server.
_CONTROLLED = (
    *SETTINGS_ENV,
    "HOST",
    "PORT",
    "WEB_CONCURRENCY",
    "GUNICORN_TIMEOUT",
    "GUNICORN_CMD_ARGS",
    "FLASK_APP",
)

#: System tests send bursts of thousands of requests from one address: far above any limit meant
#: for people. Tests of the limits themselves set RATE_LIMIT (or RATELIMIT_ENABLED) explicitly.
_TEST_RATE_LIMIT = "1000000/minute"

#: gunicorn's access log line with the worker's pid first: "<1234> 127.0.0.1 "GET / HTTP/1.1" 200".
ACCESS_LOG_FORMAT = '%(p)s %(h)s "%(r)s" %(s)s'
ACCESS_LINE = re.compile(
    r'^<(?P<pid>\d+)> (?P<host>\S+) "(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3})$'
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(**settings: str | None) -> dict[str, str]:
    """This process's environment without the app's settings, plus the given ones (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k not in _CONTROLLED}
    env["RATE_LIMIT"] = _TEST_RATE_LIMIT
    env.update({k: v for k, v in settings.items() if v is not None})
    if settings.get("RATE_LIMIT", "") is None:
        env.pop("RATE_LIMIT")
    return env


def _no_control_socket() -> list[str]:
    """gunicorn >= 25.1 opens a control socket at one fixed path per user ($HOME/.gunicorn/gunicorn.ctl):
    test servers would replace (and on exit delete) the socket of any other server. Turn it off."""
    from gunicorn.config import KNOWN_SETTINGS

    return ["--no-control-socket"] if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS) else []


def init_db(project: Path, env: Mapping[str, str]) -> None:
    """Create the tables with the app's own command, in the same environment as the server."""
    result = subprocess.run(
        [str(FLASK), "--app", "titanic_web", "init-db"],
        cwd=project,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=INIT_DB_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"flask init-db failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"


class GunicornServer:
    """One gunicorn master with its workers; use as a context manager so it always stops."""

    def __init__(self, project: Path, env: Mapping[str, str], log_path: Path, *, workers: int = 2) -> None:
        self.project = project
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "HOST": "127.0.0.1", "PORT": str(self.port), "LOG_LEVEL": "info"}
        # Each server its own metrics folder (the master empties it at start): never the checkout's.
        self.env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(log_path.parent / f"prometheus-{self.port}"))
        self.log_path = log_path
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        #: Once stopped: the master's exit status (0 for a graceful exit after SIGTERM; -9 if SIGKILLed),
        #: and whether stop() had to SIGKILL the process group because SIGTERM did not end it.
        self.returncode: int | None = None
        self.killed_by_stop = False

    # -- life cycle ---------------------------------------------------------------------

    def __enter__(self) -> GunicornServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        command = [
            str(GUNICORN),
            "-c",
            "gunicorn.conf.py",
            "-w",
            str(self.workers),
            "--access-logformat",
            ACCESS_LOG_FORMAT,
            *_no_control_socket(),
            "wsgi:app",
        ]
        with open(self.log_path, "wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                command,
                cwd=self.project,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: teardown can kill workers too
            )
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise

    def _wait_until_up(self) -> None:
        assert self.proc is not None
        listening = f"Listening at: {self.base_url} ({self.proc.pid})"
        deadline = time.monotonic() + START_TIMEOUT
        last_error = "no attempt"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.proc.returncode} before answering:\n{self.output()}")
            # The port was free when chosen; make sure it is *this* master that listens on it.
            if listening in self.output():
                try:
                    # Connect quickly; the worker may still be loading the model, so let it answer.
                    read_timeout = max(0.5, deadline - time.monotonic())
                    response = requests.get(f"{self.base_url}/api/health", timeout=(2, read_timeout))
                    if response.status_code == 200 and response.json() == {"status": "ok"}:
                        return
                    last_error = f"{response.status_code} {response.text[:200]!r}"
                except requests.RequestException as exc:
                    last_error = repr(exc)
            time.sleep(0.2)
        raise AssertionError(
            f"gunicorn did not answer /api/health within {START_TIMEOUT:.0f}s (last: {last_error}):\n{self.output()}"
        )

    def stop(self) -> None:
        """SIGTERM the master and wait; if it hangs, SIGKILL its process group (master and workers)."""
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.poll() is not None:
            self.returncode = proc.returncode
            return
        proc.send_signal(signal.SIGTERM)  # gunicorn stops its workers, then exits
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.killed_by_stop = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group we started: pgid == the master's pid
            proc.wait(timeout=STOP_TIMEOUT)
        self.returncode = proc.returncode

    # -- inspection -----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the server is not running"
        return self.proc.pid

    def output(self) -> str:
        """Everything the server has printed so far (logs of master, workers and app)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def access_log(self) -> list[dict[str, str]]:
        """The access log lines so far, parsed: pid, host, method, path, status."""
        lines = []
        for line in self.output().splitlines():
            match = ACCESS_LINE.match(line.strip())
            if match:
                lines.append(match.groupdict())
        return lines

    def worker_pids(self) -> set[int]:
        """The pids of the master's child processes (its workers), read from /proc."""
        children = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # the process ended while we looked
                continue
            # "pid (comm) state ppid ...": comm may contain spaces and parentheses.
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == self.pid:
                children.add(int(entry.name))
        return children
