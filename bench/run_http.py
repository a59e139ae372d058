"""HTTP benchmark of /api/predict under the project's gunicorn configuration: `make bench`.

Each configuration is a server, `gunicorn -c gunicorn.conf.py` (2 sync workers) on a
free 127.0.0.1 port, and a JSON body that wrk posts to it (bench/post.lua):

  i        floor      bench/floor_app.py: a bare Flask JSON route, no model, no database
  ii       off        the real app, RECORDING=false
  iii      sqlite     the real app recording to a SQLite file in a temporary folder
  iv       postgres   the real app recording to a fresh schema of the local PostgreSQL
  v        db-down    the real app recording to PostgreSQL on a closed local port
                      (answers are spooled to local disk; the writer keeps retrying)
  i-100    floor      as (i), (ii), (iii), each posting a JSON array of 100 passengers
  ii-100   off        (the first 100 of model/data/test.csv) instead of one; ii-100 only
  iii-100  sqlite     with --only, the default runs i-100 and iii-100

The servers are started one after another, then measured in many short interleaved
rounds (i, ii, iii, iv, v, i-100, iii-100, i, ii, ...: a warm-up, then the measured run), then
stopped, and the rows that reached each database (or are left in the spool) are checked
against the answers. Figures are medians over rounds; ratios are taken within each
round (the same minute of a shared, noisy machine) against the configuration with the
same body, and their median reported. Beside wall-clock figures the CPU time of the
workers per request is measured: it shifts far less with other load. The targets
(issue 3: recording against recording off; issue 4: recording against the floor) are
printed as met / NOT met lines: timings are never assertions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
BENCH = PROJECT / "bench"
#: The servers run from this virtualenv: BENCH_SERVER_VENV, which `make bench` points at
#: .venv-prod, the package installed as the production image installs it (`pip install -e .`,
#: no test extras). The test extras bring optional libraries that others import when they find
#: them (pyarrow by pandas, rich by scikit-learn, pygments by Mako), about 75 MB in every worker.
#: Without the variable: this Python's own virtualenv.
SERVER_VENV = Path(os.environ.get("BENCH_SERVER_VENV") or sys.prefix).resolve()
BIN = SERVER_VENV / "bin"
GUNICORN = BIN / "gunicorn"
FLASK = BIN / "flask"
SERVER_PYTHON = BIN / "python"
LUA = BENCH / "post.lua"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:{port}/test"

PASSENGER = {
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
TEST_CSV = PROJECT / "model" / "data" / "test.csv"
MANY = 100  # passengers in the array body of the *-100 configurations
DEFAULT_ONLY = "i,ii,iii,iv,v,i-100,iii-100"

START_TIMEOUT = 60.0
SETTLE_TIMEOUT = 180.0  # seconds to wait for the writers to catch up before a run
STOP_TIMEOUT = 30.0  # gunicorn's graceful_timeout; the recorder drains within 10 s of it
WORKERS = 2  # what gunicorn.conf.py runs without WEB_CONCURRENCY

#: Settings the runner decides; inherited values must not leak into the servers.
CONTROLLED = (
    "SECRET_KEY",
    "DATABASE_URL",
    "MODEL_DIR",
    "SPOOL_DIR",
    "RECORDING",
    "HOST",
    "PORT",
    "WEB_CONCURRENCY",
    "GUNICORN_CMD_ARGS",
    "GUNICORN_TIMEOUT",
    "FLASK_APP",
    "LOG_LEVEL",
    "SPOOL_FSYNC",
    "RECORDER_BATCH_ROWS",
    "RECORDER_FLUSH_SECONDS",
    "RECORDER_RETRY_MAX_SECONDS",
    "RECORDER_SHUTDOWN_SECONDS",
    "DATABASE_CONNECT_TIMEOUT",
    "MAX_ROWS",
    "MAX_CONTENT_LENGTH",
    "BATCH_CHUNK_ROWS",
    "BATCH_DIR",
    "BATCH_KEEP_HOURS",
    "SQLITE_BUSY_TIMEOUT_MS",
    "TRAIN_DATA",
    "APP_ENV",
    "API_KEYS",
    "API_KEYS_FILE",
    "ADMIN_API_KEYS",
    "ADMIN_API_KEYS_FILE",
    "RATE_LIMIT",
    "RATELIMIT_ENABLED",
    "RATELIMIT_STORAGE_URI",
    "RATELIMIT_KEY_PREFIX",
    "FORCE_HTTPS",
    "TRUSTED_PROXIES",
    "MODEL_CHECK_SECONDS",
    "PROMETHEUS_MULTIPROC_DIR",
    "DRIFT_MIN_ROWS",
    "DRIFT_MAX_ROWS",
    "HISTORY_PAGE_ROWS",
    "EXPORT_CHUNK_ROWS",
)

#: wrk is one client: a limit meant for people would answer it 429. The limiter stays on (its
#: cost per request is part of what is measured) with a limit no benchmark reaches.
BENCH_RATE_LIMIT = "1000000000/minute"


@dataclass
class Config:
    key: str  # i .. v, i-100 ..
    name: str
    wsgi: str
    recording: bool
    ready_marker: str  # logged once per worker when its app is loaded
    database_url: str = ""
    db_kind: str = ""  # sqlite | postgres | down | "" (nothing stored)
    rows: int = 1  # passengers in the body: 1 posts an object, more an array

    @property
    def suffix(self) -> str:
        return "" if self.rows == 1 else f"-{self.rows}"

    @property
    def floor(self) -> str:
        """The floor posting the same body: ratios against it are the issue-4 figures."""
        return "i" + self.suffix

    @property
    def off(self) -> str:
        """Recording off with the same body: ratios against it are the issue-3 figures."""
        return "ii" + self.suffix


@dataclass
class Run:
    config: str
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    requests: int
    errors: dict[str, int]
    backlog_after: int | None = None  # one worker's spool backlog right after the load stopped
    cpu_ms: float = 0.0  # CPU time of the gunicorn workers per request (all their threads)
    db_cpu_ms: float | None = None  # CPU time of the PostgreSQL backends serving them, per request

    @property
    def total_cpu_ms(self) -> float:
        return self.cpu_ms + (self.db_cpu_ms or 0.0)


# -- the machine -----------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "-"


def _wrk_version() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).splitlines()
    return first[0].split(" Copyright")[0].strip() if first else "unknown"


def _postgres_version() -> str:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=5) as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0])
    except Exception as exc:  # reported, not fatal here: the postgres config fails later with the cause
        return f"unavailable ({type(exc).__name__})"


def machine_base() -> dict[str, str]:
    """The machine and the libraries every benchmark reports."""
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": _cpu_model(),
        "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "kernel": platform.release(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "flask": _version("flask"),
        "gunicorn": _version("gunicorn"),
        "sqlalchemy": _version("sqlalchemy"),
        "scikit-learn": _version("scikit-learn"),
        "numpy": _version("numpy"),
        "pandas": _version("pandas"),
        "sqlite": sqlite3.sqlite_version,
        "servers run from": _server_venv(),
    }


def _server_venv() -> str:
    shown = os.path.relpath(SERVER_VENV, PROJECT) if SERVER_VENV.is_relative_to(PROJECT) else str(SERVER_VENV)
    try:
        extras = subprocess.run(
            [str(SERVER_PYTHON), "-c", "import importlib.util as u; print(bool(u.find_spec('pyarrow')))"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"{shown} (not found: {SERVER_PYTHON})"
    return f"{shown} ({'with' if extras == 'True' else 'without'} the test extras)"


def machine() -> dict[str, str]:
    return {
        **machine_base(),
        "psycopg": _version("psycopg"),
        "postgresql": _postgres_version(),
        "wrk": _wrk_version(),
    }


# -- helpers ---------------------------------------------------------------------------------


def passengers_from_test_csv(count: int) -> list[dict[str, Any]]:
    """The first `count` passengers of model/data/test.csv as API objects (empty cells: null)."""
    import csv

    integers, numbers = ("PassengerId", "Pclass", "SibSp", "Parch"), ("Age", "Fare")
    out: list[dict[str, Any]] = []
    with open(TEST_CSV, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            item: dict[str, Any] = {}
            for name, text in row.items():
                if name in integers:
                    item[name] = int(text)
                elif name in numbers:
                    item[name] = float(text) if text else None
                elif name in ("Cabin", "Embarked"):
                    item[name] = text or None
                else:
                    item[name] = text
            out.append(item)
            if len(out) == count:
                break
    return out


def write_body(rows: int, work: Path) -> Path:
    """The JSON body of a configuration, in a file that post.lua reads (WRK_BODY)."""
    path = work / f"body-{rows}.json"
    if not path.exists():
        payload: Any = PASSENGER if rows == 1 else passengers_from_test_csv(rows)
        if rows > 1 and len(payload) != rows:
            raise RuntimeError(f"{TEST_CSV} has fewer than {rows} passengers")
        path.write_text(json.dumps(payload))
    return path


def free_port() -> int:
    """A 127.0.0.1 port nothing listens on: bound by us, then closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(url: str, *, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Server:
    """One gunicorn master with its workers, started from the checkout; stop() always ends it."""

    def __init__(self, config: Config, env: dict[str, str], log_path: Path) -> None:
        self.config = config
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "HOST": "127.0.0.1", "PORT": str(self.port)}
        self.log_path = log_path
        self.workers = int(self.env.get("WEB_CONCURRENCY") or WORKERS)
        self.proc: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def command(self) -> list[str]:
        return [str(GUNICORN), "-c", "gunicorn.conf.py", self.config.wsgi]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=PROJECT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so a hung stop can be killed whole
            )
        deadline = time.monotonic() + timeout
        listening = f"Listening at: {self.base} ({self.proc.pid})"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.config.name}: gunicorn exited with {self.proc.returncode}:\n{self.log()[-3000:]}"
                )
            text = self.log()
            # This master on this port, every worker's app loaded, and /api/health answers.
            if listening in text and text.count(self.config.ready_marker) >= self.workers:
                try:
                    status, body = http(f"{self.base}/api/health", timeout=5)
                    if status == 200 and json.loads(body) == {"status": "ok"}:
                        return
                except (OSError, ValueError):
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.config.name}: not up within {timeout:.0f}s:\n{self.log()[-3000:]}")

    def stop(self) -> float:
        """SIGTERM the master, wait; SIGKILL its process group if it hangs. Returns the seconds taken."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return 0.0
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the group we started: pgid is the master's pid
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        return time.monotonic() - began

    def answered(self) -> int:
        return sum(1 for line in self.log().splitlines() if '"POST /api/predict HTTP/1.1" 200 ' in line)


def wrk(url: str, *, body: Path, seconds: int, threads: int, connections: int) -> dict[str, Any]:
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        f"{url}/api/predict",
    ]
    out = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
        env={**os.environ, "WRK_BODY": str(body)},
    )
    for line in out.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line[len("WRK_JSON ") :])
    raise RuntimeError(f"wrk gave no result ({out.returncode}):\n{out.stdout}\n{out.stderr}")


# -- databases -------------------------------------------------------------------------------


def pg_create_schema() -> tuple[str, str]:
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return schema, PG_URL.format(port=5432) + f"?options=-csearch_path%3D{schema}"


def pg_drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def init_db(env: dict[str, str]) -> None:
    out = subprocess.run(
        [str(FLASK), "--app", "titanic_web", "init-db"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"flask init-db failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")


def database_rows(config: Config, schema: str | None) -> int:
    """Rows in the predictions table of a configuration's live database (0 for db-down)."""
    if config.db_kind == "sqlite":
        path = config.database_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            return int(conn.execute("SELECT count(*) FROM predictions").fetchone()[0])
    if config.db_kind == "postgres":
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=5) as conn:
            return int(conn.execute(f'SELECT count(*) FROM "{schema}".predictions').fetchone()[0])
    return 0


def spooled_rows(spool_dir: Path) -> int:
    """Rows left in a stopped server's spool, not yet delivered (the app's own reader)."""
    sys.path.insert(0, str(PROJECT))
    from titanic_web import spool

    return int(spool.scan(spool_dir)["rows"])


def kept_rows(config: Config, spool_dir: Path, schema: str | None, *, answered: int, seconds: float) -> str:
    """Every answered passenger in the database or the spool? One line for the report."""
    expected = answered * config.rows
    stored, spooled = database_rows(config, schema), spooled_rows(spool_dir)
    verdict = "all kept" if stored + spooled == expected else "NOT ALL KEPT"
    if config.db_kind == "down":
        where = f"{spooled} spooled"
    else:
        where = f"{stored} stored" + (f" + {spooled} spooled" if spooled else "")
    return f"{where} / {expected}, {verdict} (stop {seconds:.1f}s)"


# -- CPU accounting -------------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, all its threads included (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return sorted(out)


def postgres_backends(worker_pids: list[int]) -> list[int]:
    """The PostgreSQL server processes serving these workers' connections (same machine).

    A worker's sockets (inodes under /proc/PID/fd) connected to port 5432 give their local
    ports; pg_stat_activity maps a client port to the backend's pid.
    """
    inodes = set()
    for pid in worker_pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[9] in inodes and cols[2].endswith(":1538"):  # remote port 5432
                ports.append(int(cols[1].rsplit(":", 1)[1], 16))
    if not ports:
        return []
    import psycopg

    with psycopg.connect(PG_ADMIN, connect_timeout=5) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%s)", (ports,)).fetchall()
    return [int(r[0]) for r in rows]


def cpu_snapshot(pids: list[int]) -> dict[int, float]:
    return {pid: value for pid in pids if (value := cpu_seconds(pid)) is not None}


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two snapshots by the processes alive at both."""
    return sum(after[pid] - before[pid] for pid in before if pid in after)


# -- the benchmark ---------------------------------------------------------------------------


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CONTROLLED}
    env["SECRET_KEY"] = "bench-" + uuid.uuid4().hex
    env["MODEL_DIR"] = os.environ.get("MODEL_DIR") or str(PROJECT / "model" / "registry")
    env["RATE_LIMIT"] = BENCH_RATE_LIMIT
    return env


def all_configs(work: Path, down_port: int) -> list[Config]:
    """Every configuration, with its SQLite file in work (PostgreSQL's URL is filled in once its
    schema exists) and the database that is down on down_port."""

    def sqlite(key: str) -> str:
        return f"sqlite:///{work / f'{key}.db'}"  # one file per server: rows counted per server

    many = {"rows": MANY}
    return [
        Config("i", "floor", "bench.floor_app:app", False, "floor app loaded"),
        Config("ii", "off", "wsgi:app", False, "loaded from", sqlite("off")),
        Config("iii", "sqlite", "wsgi:app", True, "loaded from", sqlite("iii"), "sqlite"),
        Config("iv", "postgres", "wsgi:app", True, "loaded from", "", "postgres"),
        Config("v", "db-down", "wsgi:app", True, "loaded from", PG_URL.format(port=down_port), "down"),
        Config(f"i-{MANY}", "floor", "bench.floor_app:app", False, "floor app loaded", **many),
        Config(f"ii-{MANY}", "off", "wsgi:app", False, "loaded from", sqlite("off"), **many),
        Config(f"iii-{MANY}", "sqlite", "wsgi:app", True, "loaded from", sqlite(f"iii-{MANY}"), "sqlite", **many),
    ]


def server_env(config: Config, env: dict[str, str], work: Path) -> dict[str, str]:
    """A configuration's settings: its database, and its own spool, batch and metrics folders in work."""
    return {
        **env,
        "DATABASE_URL": config.database_url,
        "SPOOL_DIR": str(work / f"spool-{config.key}"),
        "BATCH_DIR": str(work / f"batches-{config.key}"),
        "PROMETHEUS_MULTIPROC_DIR": str(work / f"prometheus-{config.key}"),
        "RECORDING": "true" if config.recording else "false",
    }


def start_server(config: Config, env: dict[str, str], work: Path) -> tuple[Server, Path]:
    settings = server_env(config, env, work)
    spool_dir = Path(settings["SPOOL_DIR"])
    server = Server(config, settings, work / f"gunicorn-{config.key}-{config.name}.log")
    server.start()
    # The body wrk will post, once: answered 200, with one prediction per passenger.
    status, body = http(f"{server.base}/api/predict", body=write_body(config.rows, work).read_bytes())
    answer = json.loads(body) if status == 200 else {}
    wanted = 1 if config.wsgi.startswith("bench.") else config.rows  # the floor answers one object
    if status != 200 or len(answer.get("predictions", [])) != wanted:
        server.stop()
        raise RuntimeError(f"{config.key} {config.name}: /api/predict answered {status}: {body[:300]!r}")
    return server, spool_dir


def settle(servers: dict[str, tuple[Server, Path]], *, timeout: float = SETTLE_TIMEOUT) -> float:
    """Wait until every recording server with a working database has delivered its spool.

    A writer still catching up after its own run (a 100-passenger body leaves tens of
    thousands of rows) would spend the same two cores during the next configuration's
    run and bias it. Returns the seconds waited.
    """
    started = time.monotonic()
    spools = [d for server, d in servers.values() if server.config.recording and server.config.db_kind != "down"]
    while any(spooled_rows(d) for d in spools) and time.monotonic() - started < timeout:
        time.sleep(0.2)
    return time.monotonic() - started


def one_run(server: Server, rnd: int, args: argparse.Namespace, work: Path) -> Run:
    """Warm up, then measure one configuration's server for args.duration seconds."""
    config = server.config
    assert server.proc is not None
    load = {"body": write_body(config.rows, work), "threads": args.threads, "connections": args.connections}
    if args.warmup > 0:
        wrk(server.base, seconds=args.warmup, **load)
    workers = children(server.proc.pid)
    backends = postgres_backends(workers) if config.db_kind == "postgres" else []
    before, db_before = cpu_snapshot(workers), cpu_snapshot(backends)
    result = wrk(server.base, seconds=args.duration, **load)
    app_cpu, db_cpu = cpu_used(before, cpu_snapshot(workers)), cpu_used(db_before, cpu_snapshot(backends))
    backlog = None
    if config.recording:
        _, body = http(f"{server.base}/api/ready")
        backlog = json.loads(body).get("backlog", {}).get("rows")
    lat = result["latency_us"]
    requests = max(1, result["requests"])
    return Run(
        config=config.key,
        round=rnd,
        rps=result["requests"] / (result["duration_us"] / 1e6),
        p50_ms=lat["p50"] / 1000,
        p99_ms=lat["p99"] / 1000,
        mean_ms=lat["mean"] / 1000,
        max_ms=lat["max"] / 1000,
        requests=result["requests"],
        errors=result["errors"],
        backlog_after=backlog,
        cpu_ms=1000 * app_cpu / requests,
        db_cpu_ms=(1000 * db_cpu / requests) if backends else None,
    )


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


#: (target, worse side): issue 3 compares recording with recording off, issue 4 with the floor.
RPS_VS_OFF = 0.90  # issue 3: req/s recording on (iii), (iv) / recording off (ii)
P99_DOWN = 1.50  # issue 3: p99 database down (v) / database up (iv), (iii)
RPS_VS_FLOOR = 0.60  # issue 4: req/s one passenger recording on (iii) / floor (i)
P99_VS_FLOOR = 2.00  # issue 4: p99 recording on (iii) / floor (i), for each body


def report(configs: list[Config], runs: list[Run], rounds: int, kept: dict[str, str]) -> tuple[str, dict[str, Any]]:
    by = {(r.config, r.round): r for r in runs}
    numbers = range(1, rounds + 1)
    lines = []
    head = (
        f"{'config':<17}{'body':>5}{'req/s':>7}{'pass/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}"
        f"{'/floor':>7}{'/off':>6}{'p99/floor':>10}{'p99/off':>8}{'CPU us/req':>11}{'errors':>7}  stored"
    )
    lines.append(head)
    lines.append("-" * (len(head) + 40))
    summary: dict[str, Any] = {}
    for c in configs:
        mine = [by[(c.key, n)] for n in numbers if (c.key, n) in by]
        if not mine:
            continue

        def ratio(other: str, attr: str) -> float:
            return median(
                [
                    getattr(by[(c.key, n)], attr) / getattr(by[(other, n)], attr)
                    for n in numbers
                    if (c.key, n) in by and (other, n) in by
                ]
            )

        db_cpu = [r.db_cpu_ms for r in mine if r.db_cpu_ms is not None]
        s = {
            "rows": c.rows,
            "rps": median([r.rps for r in mine]),
            "p50_ms": median([r.p50_ms for r in mine]),
            "p99_ms": median([r.p99_ms for r in mine]),
            "max_ms": median([r.max_ms for r in mine]),
            "rps_vs_floor": ratio(c.floor, "rps"),
            "rps_vs_off": ratio(c.off, "rps"),
            "p99_vs_floor": ratio(c.floor, "p99_ms"),
            "p99_vs_off": ratio(c.off, "p99_ms"),
            "p99_vs_sqlite": ratio("iii" + c.suffix, "p99_ms"),
            "p99_vs_postgres": ratio("iv" + c.suffix, "p99_ms"),
            "cpu_ms": median([r.cpu_ms for r in mine]),
            "db_cpu_ms": median(db_cpu) if db_cpu else None,
            "cpu_vs_off": ratio(c.off, "total_cpu_ms"),
            "cpu_vs_floor": ratio(c.floor, "total_cpu_ms"),
            "errors": sum(sum(r.errors.values()) for r in mine),
            "stored": kept.get(c.key, "-"),
        }
        summary[c.key] = s
        # In microseconds: recording's cost is tens of them, a tenth of a millisecond would hide it.
        cpu = f"{s['cpu_ms'] * 1000:.0f}" + (f"+{s['db_cpu_ms'] * 1000:.0f}" if s["db_cpu_ms"] is not None else "")

        def cell(value: float, width: int, fmt: str = ".2f") -> str:
            return f"{'-':>{width}}" if value != value else f"{value:>{width}{fmt}}"  # NaN: not measured

        lines.append(
            f"{'(' + c.key + ') ' + c.name:<17}{c.rows:>5}{s['rps']:>7.0f}{s['rps'] * c.rows:>8.0f}"
            f"{s['p50_ms']:>8.1f}{s['p99_ms']:>8.1f}{s['max_ms']:>8.0f}"
            f"{cell(s['rps_vs_floor'], 7)}{cell(s['rps_vs_off'], 6)}{cell(s['p99_vs_floor'], 10)}"
            f"{cell(s['p99_vs_off'], 8)}{cpu:>11}{s['errors']:>7}  {s['stored']}"
        )
    lines.append("")
    lines.append("body: passengers per request (pass/s = req/s x body). req/s and latencies are medians over rounds;")
    lines.append("ratios are medians of within-round ratios against the floor / recording off with the same body")
    lines.append("(the floor parses the body and answers one small object, whatever the body holds).")
    lines.append("CPU us/req: CPU time of the gunicorn workers (all threads: the request and the recorder's")
    lines.append("writer) per request; +N for (iv) is the CPU of the PostgreSQL backends serving them.")
    lines.append("")
    lines.append("per round: req/s, p99 ms, CPU us/req")
    for n in numbers:
        cells = [
            f"({c.key}) {by[(c.key, n)].rps:.0f}, {by[(c.key, n)].p99_ms:.0f}, {by[(c.key, n)].cpu_ms * 1000:.0f}"
            for c in configs
            if (c.key, n) in by
        ]
        lines.append(f"  round {n}: " + " | ".join(cells))
    lines.append("")

    def verdict(ok: bool) -> str:
        return "met    " if ok else "NOT met"

    def spread(key: str, other: str, attr: str) -> str:
        """The within-round ratios' range: how far one round's figure can be trusted."""
        values = [
            getattr(by[(key, n)], attr) / getattr(by[(other, n)], attr)
            for n in numbers
            if (key, n) in by and (other, n) in by
        ]
        return f"rounds {min(values):.2f}-{max(values):.2f}" if values else "no rounds"

    lines.append("issue 3 targets, recording against recording off (figures, not assertions):")
    for key in ("iii", "iv"):
        if key in summary and "ii" in summary:
            value = summary[key]["rps_vs_off"]
            lines.append(
                f"  {verdict(value >= RPS_VS_OFF)}  req/s ({key}) / (ii) = {value:.2f}   (target >= "
                f"{RPS_VS_OFF:.2f}; {spread(key, 'ii', 'rps')}; CPU per request ({key}) / (ii) = "
                f"{summary[key]['cpu_vs_off']:.2f})"
            )
    for key, name in (("iv", "postgres"), ("iii", "sqlite")):
        if "v" in summary and key in summary:
            value = summary["v"][f"p99_vs_{name}"]
            lines.append(
                f"  {verdict(value <= P99_DOWN)}  p99 (v) / ({key}) = {value:.2f}   (target <= {P99_DOWN:.2f};"
                f" {spread('v', key, 'p99_ms')})"
            )
    lines.append("issue 4 targets, recording on SQLite against the floor (figures, not assertions):")
    if "iii" in summary and "i" in summary:
        value = summary["iii"]["rps_vs_floor"]
        lines.append(
            f"  {verdict(value >= RPS_VS_FLOOR)}  req/s (iii) / (i) = {value:.2f}   (target >= "
            f"{RPS_VS_FLOOR:.2f}; {spread('iii', 'i', 'rps')}; CPU per request (iii) / (i) = "
            f"{summary['iii']['cpu_vs_floor']:.2f})"
        )
    for key in ("iii", f"iii-{MANY}"):
        floor = "i" + key.removeprefix("iii")
        if key in summary and floor in summary:
            value = summary[key]["p99_vs_floor"]
            lines.append(
                f"  {verdict(value <= P99_VS_FLOOR)}  p99 ({key}) / ({floor}) = {value:.2f}   (target <= "
                f"{P99_VS_FLOOR:.2f}; {spread(key, floor, 'p99_ms')}; {summary[key]['p99_ms']:.1f} ms against "
                f"{summary[floor]['p99_ms']:.1f} ms)"
            )
    key = f"iii-{MANY}"
    if key in summary and f"i-{MANY}" in summary:
        lines.append(
            f"  figure   req/s ({key}) / (i-{MANY}) = {summary[key]['rps_vs_floor']:.2f}   (no target: the"
            f" floor answers one object; CPU per request {summary[key]['cpu_vs_floor']:.2f}x the floor's)"
        )
    backlog = [f"({r.config}) r{r.round} {r.backlog_after}" for r in runs if r.backlog_after is not None]
    if backlog:
        lines.append("")
        lines.append("spool backlog of one worker right after each run (rows): " + ", ".join(backlog))
    return "\n".join(lines), summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # Many short rounds rather than a few long ones: on a shared machine, other work comes in
    # bursts of seconds; short interleaved runs spread a burst over every configuration.
    parser.add_argument("--rounds", type=int, default=12, help="interleaved rounds of all configurations [12]")
    parser.add_argument("--duration", type=int, default=3, help="whole seconds of measured load per run [3]")
    parser.add_argument("--warmup", type=int, default=1, help="whole seconds of unmeasured load before each run [1]")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections [8]")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads [2]")
    parser.add_argument(
        "--only",
        default=DEFAULT_ONLY,
        help=f"comma-separated configurations to run, of i,ii,iii,iv,v,i-{MANY},ii-{MANY},iii-{MANY} [{DEFAULT_ONLY}]",
    )
    parser.add_argument("--json", type=Path, help="also write machine, runs and summary to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, spools, SQLite files)")
    args = parser.parse_args(argv)

    if shutil.which("wrk") is None:
        print("wrk is not installed: `apt-get install -y wrk` (make bench does it)", file=sys.stderr)
        return 2
    env = base_env()
    sys.path.insert(0, str(PROJECT))
    from titanic_web import registry
    from titanic_web.predictor import ModelError

    try:
        registry.model_path(Path(env["MODEL_DIR"]))
    except ModelError as exc:
        print(f"{exc} (make bench trains one)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="titanic-bench-"))
    schema: str | None = None
    runs: list[Run] = []
    servers: dict[str, tuple[Server, Path]] = {}
    kept: dict[str, str] = {}
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    wanted = [k.strip() for k in args.only.split(",") if k.strip()]
    began = time.monotonic()
    try:
        # The database that is down: a port bound here and never listened on, held for the
        # whole benchmark, so every connection is refused and no other program can take it.
        closed.bind(("127.0.0.1", 0))
        down_port = closed.getsockname()[1]

        configs = all_configs(work, down_port)
        unknown = set(wanted) - {c.key for c in configs}
        if unknown:
            print(
                f"unknown configuration(s) {', '.join(sorted(unknown))}: choose from "
                f"{', '.join(c.key for c in configs)}",
                file=sys.stderr,
            )
            return 2
        configs = sorted((c for c in configs if c.key in wanted), key=lambda c: wanted.index(c.key))

        info = machine()
        print(f"# titanic-web HTTP benchmark: POST /api/predict, one passenger or an array of {MANY} per request")
        for k, v in info.items():
            print(f"{k + ':':<23}{v}")
        python = os.path.relpath(sys.executable, PROJECT) if sys.executable.startswith(str(PROJECT)) else sys.executable
        print(f"{'command:':<23}{' '.join([python, 'bench/run_http.py', *(sys.argv[1:] if argv is None else argv)])}")
        print(
            f"{'load:':<23}wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s after {args.warmup:g}s "
            f"warm-up, {args.rounds} interleaved round(s) of {', '.join(c.key for c in configs)}; "
            f"gunicorn -c gunicorn.conf.py ({WORKERS} sync workers)"
        )
        print(flush=True)

        for c in configs:
            if c.db_kind == "sqlite":
                init_db({**env, "DATABASE_URL": c.database_url})
        if any(c.db_kind == "postgres" for c in configs):
            try:
                schema, pg_url = pg_create_schema()
            except Exception as exc:
                print(
                    f"PostgreSQL at {PG_ADMIN} is not reachable ({type(exc).__name__}: {exc}); "
                    "start it, or leave (iv) out with --only",
                    file=sys.stderr,
                )
                return 2
            for c in configs:
                if c.db_kind == "postgres":
                    c.database_url = pg_url
            init_db({**env, "DATABASE_URL": pg_url})
        for c in configs:  # one after another: each loads the model in both workers
            servers[c.key] = start_server(c, env, work)
            print(f"started ({c.key}) {c.name} on port {servers[c.key][0].port}", flush=True)
        for n in range(1, args.rounds + 1):
            for c in configs:
                waited = settle(servers)
                if waited > 1:
                    print(f"  waited {waited:.0f} s for the writers to deliver their spools", flush=True)
                run = one_run(servers[c.key][0], n, args, work)
                runs.append(run)
                errs = sum(run.errors.values())
                print(
                    f"round {n} ({c.key}) {c.name:<9}{run.rps:6.0f} req/s  p50 {run.p50_ms:6.1f} ms  "
                    f"p99 {run.p99_ms:6.1f} ms  max {run.max_ms:6.0f} ms  CPU {run.cpu_ms * 1000:5.0f} us/req"
                    + ("" if run.db_cpu_ms is None else f" + PostgreSQL {run.db_cpu_ms * 1000:.0f}")
                    + (f"  errors {run.errors}" if errs else ""),
                    flush=True,
                )
        # Stop (the recorder drains its spool on the way out), then check every answer was kept.
        for c in configs:
            server, spool_dir = servers.pop(c.key)
            answered = server.answered()
            seconds = server.stop()
            if c.recording:
                kept[c.key] = kept_rows(c, spool_dir, schema, answered=answered, seconds=seconds)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"\nfinished in {time.monotonic() - began:.0f} s; load average at the end {load}\n")
        text, summary = report(configs, runs, args.rounds, kept)
        print(text)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "machine": info,
                        "args": {k: str(v) for k, v in vars(args).items()},
                        "runs": [r.__dict__ for r in runs],
                        "summary": summary,
                        "kept": kept,
                    },
                    indent=2,
                )
            )
    finally:
        for server, _ in servers.values():
            server.stop()
        closed.close()
        if schema is not None:
            pg_drop_schema(schema)
        if args.keep:
            print(f"\nlogs, spools and the SQLite files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
