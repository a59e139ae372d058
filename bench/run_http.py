"""HTTP benchmark of /api/predict under the project's gunicorn configuration: `make bench`.

Five configurations, each served by `gunicorn -c gunicorn.conf.py` (2 sync workers)
on a free 127.0.0.1 port and loaded with wrk (bench/post.lua posts one passenger):

  i    floor      bench/floor_app.py: a bare Flask JSON route, no model, no database
  ii   off        the real app, RECORDING=false
  iii  sqlite     the real app recording to a SQLite file in a temporary folder
  iv   postgres   the real app recording to a fresh schema of the local PostgreSQL
  v    db-down    the real app recording to PostgreSQL on a closed local port
                  (answers are spooled to local disk; the writer keeps retrying)

The five servers are started one after another, then measured in interleaved rounds
(i, ii, iii, iv, v, i, ii, ...: a warm-up, then the measured run), then stopped, and
the rows that reached each database (or the spool) are checked against the answers.
Figures are medians over rounds; ratios are taken within each round (the same minute
of a shared, noisy machine) and their median reported. Beside wall-clock figures the
CPU time of the workers per request is measured: it shifts far less with other load.
The targets are printed as met / NOT met lines: timings are never assertions.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
BENCH = PROJECT / "bench"
BIN = Path(sys.executable).parent
GUNICORN = BIN / "gunicorn"
FLASK = BIN / "flask"
LUA = BENCH / "post.lua"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:{port}/test"

PASSENGER = {"PassengerId": 892, "Pclass": 3, "Name": "Kelly, Mr. James", "Sex": "male", "Age": 34.5,
             "SibSp": 0, "Parch": 0, "Ticket": "330911", "Fare": 7.8292, "Cabin": None, "Embarked": "Q"}

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0  # gunicorn's graceful_timeout; the recorder drains within 10 s of it
WORKERS = 2  # what gunicorn.conf.py runs without WEB_CONCURRENCY

#: Settings the runner decides; inherited values must not leak into the servers.
CONTROLLED = ("SECRET_KEY", "DATABASE_URL", "MODEL_DIR", "SPOOL_DIR", "RECORDING", "HOST", "PORT",
              "WEB_CONCURRENCY", "GUNICORN_CMD_ARGS", "GUNICORN_TIMEOUT", "FLASK_APP", "LOG_LEVEL",
              "SPOOL_FSYNC", "RECORDER_BATCH_ROWS", "RECORDER_FLUSH_SECONDS", "RECORDER_RETRY_MAX_SECONDS",
              "RECORDER_SHUTDOWN_SECONDS", "DATABASE_CONNECT_TIMEOUT", "MAX_ROWS", "MAX_CONTENT_LENGTH")


@dataclass
class Config:
    key: str  # i .. v
    name: str
    wsgi: str
    recording: bool
    ready_marker: str  # logged once per worker when its app is loaded
    database_url: str = ""
    db_kind: str = ""  # sqlite | postgres | down | "" (nothing stored)


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


def machine() -> dict[str, str]:
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
        "psycopg": _version("psycopg"),
        "scikit-learn": _version("scikit-learn"),
        "numpy": _version("numpy"),
        "pandas": _version("pandas"),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": _postgres_version(),
        "wrk": _wrk_version(),
    }


# -- helpers ---------------------------------------------------------------------------------

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
        self.proc: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(GUNICORN), "-c", "gunicorn.conf.py", self.config.wsgi],
                cwd=PROJECT, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so a hung stop can be killed whole
            )
        deadline = time.monotonic() + START_TIMEOUT
        listening = f"Listening at: {self.base} ({self.proc.pid})"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.config.name}: gunicorn exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            text = self.log()
            # This master on this port, both workers' apps loaded, and /api/health answers.
            if listening in text and text.count(self.config.ready_marker) >= WORKERS:
                try:
                    status, body = http(f"{self.base}/api/health", timeout=5)
                    if status == 200 and json.loads(body) == {"status": "ok"}:
                        return
                except (OSError, ValueError):
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.config.name}: not up within {START_TIMEOUT:.0f}s:\n{self.log()[-3000:]}")

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


def wrk(url: str, *, seconds: float, threads: int, connections: int) -> dict[str, Any]:
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
               "-s", str(LUA), f"{url}/api/predict"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line[len("WRK_JSON "):])
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
    out = subprocess.run([str(FLASK), "--app", "titanic_web", "init-db"], cwd=PROJECT, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"flask init-db failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")


def stored_rows(config: Config, spool_dir: Path, schema: str | None) -> int | None:
    """Rows in predictions (recording to a live database) or records spooled on disk (database down)."""
    if config.db_kind == "sqlite":
        path = config.database_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            return int(conn.execute("SELECT count(*) FROM predictions").fetchone()[0])
    if config.db_kind == "postgres":
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=5) as conn:
            return int(conn.execute(f'SELECT count(*) FROM "{schema}".predictions').fetchone()[0])
    if config.db_kind == "down":
        rows = 0
        for path in spool_dir.glob("*.jsonl"):
            with open(path, "rb") as fh:
                rows += sum(json.loads(line)["n"] for line in fh if line.endswith(b"\n"))
        return rows
    return None


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
    env["MODEL_DIR"] = os.environ.get("MODEL_DIR") or str(PROJECT / "model" / "artifacts")
    return env


def start_server(config: Config, env: dict[str, str], work: Path) -> tuple[Server, Path]:
    spool_dir = work / f"spool-{config.key}"
    server_env = {**env, "DATABASE_URL": config.database_url, "SPOOL_DIR": str(spool_dir),
                  "RECORDING": "true" if config.recording else "false"}
    server = Server(config, server_env, work / f"gunicorn-{config.key}-{config.name}.log")
    server.start()
    status, body = http(f"{server.base}/api/predict", body=json.dumps(PASSENGER).encode())
    if status != 200 or "predictions" not in json.loads(body):
        server.stop()
        raise RuntimeError(f"{config.name}: /api/predict answered {status}: {body[:300]!r}")
    return server, spool_dir


def one_run(server: Server, rnd: int, args: argparse.Namespace) -> Run:
    """Warm up, then measure one configuration's server for args.duration seconds."""
    config = server.config
    assert server.proc is not None
    if args.warmup > 0:
        wrk(server.base, seconds=args.warmup, threads=args.threads, connections=args.connections)
    workers = children(server.proc.pid)
    backends = postgres_backends(workers) if config.db_kind == "postgres" else []
    before, db_before = cpu_snapshot(workers), cpu_snapshot(backends)
    result = wrk(server.base, seconds=args.duration, threads=args.threads, connections=args.connections)
    app_cpu, db_cpu = cpu_used(before, cpu_snapshot(workers)), cpu_used(db_before, cpu_snapshot(backends))
    backlog = None
    if config.recording:
        _, body = http(f"{server.base}/api/ready")
        backlog = json.loads(body).get("backlog", {}).get("rows")
    lat = result["latency_us"]
    requests = max(1, result["requests"])
    return Run(
        config=config.key, round=rnd,
        rps=result["requests"] / (result["duration_us"] / 1e6),
        p50_ms=lat["p50"] / 1000, p99_ms=lat["p99"] / 1000, mean_ms=lat["mean"] / 1000, max_ms=lat["max"] / 1000,
        requests=result["requests"], errors=result["errors"], backlog_after=backlog,
        cpu_ms=1000 * app_cpu / requests, db_cpu_ms=(1000 * db_cpu / requests) if backends else None,
    )


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(configs: list[Config], runs: list[Run], rounds: int, kept: dict[str, str]) -> tuple[str, dict[str, Any]]:
    by = {(r.config, r.round): r for r in runs}
    numbers = range(1, rounds + 1)
    lines = []
    head = (f"{'config':<15}{'req/s':>7}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'/(i)':>6}{'/(ii)':>7}"
            f"{'p99/(ii)':>9}{'CPU ms/req':>11}{'errors':>7}  stored")
    lines.append(head)
    lines.append("-" * (len(head) + 30))
    summary: dict[str, Any] = {}
    for c in configs:
        mine = [by[(c.key, n)] for n in numbers if (c.key, n) in by]
        if not mine:
            continue

        def ratio(other: str, attr: str) -> float:
            return median([getattr(by[(c.key, n)], attr) / getattr(by[(other, n)], attr)
                           for n in numbers if (c.key, n) in by and (other, n) in by])

        db_cpu = [r.db_cpu_ms for r in mine if r.db_cpu_ms is not None]
        s = {
            "rps": median([r.rps for r in mine]), "p50_ms": median([r.p50_ms for r in mine]),
            "p99_ms": median([r.p99_ms for r in mine]), "max_ms": median([r.max_ms for r in mine]),
            "rps_vs_floor": ratio("i", "rps"), "rps_vs_off": ratio("ii", "rps"), "p99_vs_off": ratio("ii", "p99_ms"),
            "p99_vs_sqlite": ratio("iii", "p99_ms"), "p99_vs_postgres": ratio("iv", "p99_ms"),
            "cpu_ms": median([r.cpu_ms for r in mine]), "db_cpu_ms": median(db_cpu) if db_cpu else None,
            "cpu_vs_off": ratio("ii", "total_cpu_ms"),
            "errors": sum(sum(r.errors.values()) for r in mine), "stored": kept.get(c.key, "-"),
        }
        summary[c.key] = s
        cpu = f"{s['cpu_ms']:.1f}" + (f"+{s['db_cpu_ms']:.1f}" if s["db_cpu_ms"] is not None else "")

        def cell(value: float, width: int, fmt: str = ".2f") -> str:
            return f"{'-':>{width}}" if value != value else f"{value:>{width}{fmt}}"  # NaN: not measured

        lines.append(
            f"{'(' + c.key + ') ' + c.name:<15}{s['rps']:>7.0f}{s['p50_ms']:>8.1f}{s['p99_ms']:>8.1f}{s['max_ms']:>8.0f}"
            f"{cell(s['rps_vs_floor'], 6)}{cell(s['rps_vs_off'], 7)}{cell(s['p99_vs_off'], 9)}"
            f"{cpu:>11}{s['errors']:>7}  {s['stored']}"
        )
    lines.append("")
    lines.append("req/s and latencies are medians over rounds; ratios are medians of within-round ratios.")
    lines.append("CPU ms/req: CPU time of the two gunicorn workers (all threads: the request and the recorder's")
    lines.append("writer) per request; +N for (iv) is the CPU of the PostgreSQL backends serving them.")
    lines.append("")
    lines.append("per round: req/s, p99 ms, CPU ms/req")
    for n in numbers:
        cells = [f"({c.key}) {by[(c.key, n)].rps:.0f}, {by[(c.key, n)].p99_ms:.0f}, {by[(c.key, n)].cpu_ms:.1f}"
                 for c in configs if (c.key, n) in by]
        lines.append(f"  round {n}: " + " | ".join(cells))
    lines.append("")
    lines.append("targets (figures, not assertions):")
    for key in ("iii", "iv"):
        if key in summary and "ii" in summary:
            value = summary[key]["rps_vs_off"]
            lines.append(f"  {'met    ' if value >= 0.9 else 'NOT met'}  req/s ({key}) / (ii) = {value:.2f}   (target >= 0.90;"
                         f" CPU per request ({key}) / (ii) = {summary[key]['cpu_vs_off']:.2f})")
    for key, name in (("iv", "postgres"), ("iii", "sqlite")):
        if "v" in summary and key in summary:
            value = summary["v"][f"p99_vs_{name}"]
            lines.append(f"  {'met    ' if value <= 1.5 else 'NOT met'}  p99 (v) / ({key}) = {value:.2f}   (target <= 1.50)")
    backlog = [f"({r.config}) r{r.round} {r.backlog_after}" for r in runs if r.backlog_after is not None]
    if backlog:
        lines.append("")
        lines.append("spool backlog of one worker right after each run (rows): " + ", ".join(backlog))
    return "\n".join(lines), summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of all configurations [5]")
    parser.add_argument("--duration", type=float, default=10, help="seconds of measured load per run [10]")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of unmeasured load before each run [2]")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections [8]")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads [2]")
    parser.add_argument("--only", default="i,ii,iii,iv,v", help="comma-separated configurations to run [all]")
    parser.add_argument("--json", type=Path, help="also write machine, runs and summary to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, spools, SQLite file)")
    args = parser.parse_args(argv)

    if shutil.which("wrk") is None:
        print("wrk is not installed: `apt-get install -y wrk` (make bench does it)", file=sys.stderr)
        return 2
    env = base_env()
    if not (Path(env["MODEL_DIR"]) / "model.joblib").exists():
        print(f"no model in {env['MODEL_DIR']}: run `make model` (make bench does it)", file=sys.stderr)
        return 2

    info = machine()
    print("# titanic-web HTTP benchmark: POST /api/predict, one passenger per request")
    for k, v in info.items():
        print(f"{k + ':':<23}{v}")
    python = os.path.relpath(sys.executable, PROJECT) if sys.executable.startswith(str(PROJECT)) else sys.executable
    print(f"{'command:':<23}{' '.join([python, 'bench/run_http.py', *(sys.argv[1:] if argv is None else argv)])}")
    print(f"{'load:':<23}wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s after {args.warmup:g}s warm-up, "
          f"{args.rounds} interleaved round(s); gunicorn -c gunicorn.conf.py ({WORKERS} sync workers)")
    print(flush=True)

    work = Path(tempfile.mkdtemp(prefix="titanic-bench-"))
    schema: str | None = None
    runs: list[Run] = []
    servers: dict[str, tuple[Server, Path]] = {}
    kept: dict[str, str] = {}
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    wanted = [k.strip() for k in args.only.split(",") if k.strip()]
    began = time.monotonic()
    try:
        sqlite_url = f"sqlite:///{work / 'bench.db'}"
        # The database that is down: a port bound here and never listened on, held for the
        # whole benchmark, so every connection is refused and no other program can take it.
        closed.bind(("127.0.0.1", 0))
        down_port = closed.getsockname()[1]
        configs = [
            Config("i", "floor", "bench.floor_app:app", False, "floor app loaded"),
            Config("ii", "off", "wsgi:app", False, "loaded from", f"sqlite:///{work / 'off.db'}"),
            Config("iii", "sqlite", "wsgi:app", True, "loaded from", sqlite_url, "sqlite"),
            Config("iv", "postgres", "wsgi:app", True, "loaded from", "", "postgres"),
            Config("v", "db-down", "wsgi:app", True, "loaded from", PG_URL.format(port=down_port), "down"),
        ]
        configs = [c for c in configs if c.key in wanted]
        if any(c.db_kind == "sqlite" for c in configs):
            init_db({**env, "DATABASE_URL": sqlite_url})
        if any(c.db_kind == "postgres" for c in configs):
            try:
                schema, pg_url = pg_create_schema()
            except Exception as exc:
                print(f"PostgreSQL at {PG_ADMIN} is not reachable ({type(exc).__name__}: {exc}); "
                      "start it, or leave (iv) out with --only i,ii,iii,v", file=sys.stderr)
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
                run = one_run(servers[c.key][0], n, args)
                runs.append(run)
                errs = sum(run.errors.values())
                print(f"round {n} ({c.key}) {c.name:<9}{run.rps:6.0f} req/s  p50 {run.p50_ms:6.1f} ms  "
                      f"p99 {run.p99_ms:6.1f} ms  max {run.max_ms:6.0f} ms  CPU {run.cpu_ms:5.1f} ms/req"
                      + ("" if run.db_cpu_ms is None else f" + PostgreSQL {run.db_cpu_ms:.1f}")
                      + (f"  errors {run.errors}" if errs else ""), flush=True)
        # Stop (the recorder drains its spool on the way out), then check every answer was kept.
        for c in configs:
            server, spool_dir = servers.pop(c.key)
            before_stop = server.answered()
            seconds = server.stop()
            stored = stored_rows(c, spool_dir, schema)
            if stored is not None:
                where = "spooled" if c.db_kind == "down" else "stored"
                verdict = "all kept" if stored == before_stop else "NOT ALL KEPT"
                kept[c.key] = f"{stored}/{before_stop} {where}, {verdict} (stop {seconds:.1f}s)"
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"\nfinished in {time.monotonic() - began:.0f} s; load average at the end {load}\n")
        text, summary = report(configs, runs, args.rounds, kept)
        print(text)
        if args.json:
            args.json.write_text(json.dumps({"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                                             "runs": [r.__dict__ for r in runs], "summary": summary,
                                             "kept": kept}, indent=2))
    finally:
        for server, _ in servers.values():
            server.stop()
        closed.close()
        if schema is not None:
            pg_drop_schema(schema)
        if args.keep:
            print(f"\nlogs, spools and the SQLite file kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
