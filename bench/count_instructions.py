"""Instructions one gunicorn worker executes per POST /api/predict: `make bench-instructions`.

The machine is shared: req/s and even CPU time per request move by a tenth from one
minute to the next (bench/README.md), so run_http.py can only take ratios within a
round and report their spread. An instruction count does not move. Here each
configuration of run_http.py (floor, recording off, SQLite, PostgreSQL, database down)
is served by `gunicorn -c gunicorn.conf.py` with one worker under valgrind's callgrind
(`--instr-atstart=no --trace-children=yes`). After a warm-up, counting is switched on in
the worker alone; one-passenger requests are posted one at a time; for the recording
servers the writer delivers what they left (it is the worker's own thread, so its
instructions count); counting is switched off and the worker's total divided by the
requests.

The writer delivers full batches only (RECORDER_FLUSH_SECONDS is an hour here, and both
the warm-up and the counted requests are whole batches of RECORDER_BATCH_ROWS), as it does
under load: at valgrind's pace its one-second tick would deliver a few rows at a time.

What it leaves out: the PostgreSQL server's own work (another process: run_http.py
reports its CPU), the kernel, and waiting. So its ratios are what the req/s ratios would
be if the worker's instructions were all that mattered; wrk shares the same two cores
in run_http.py, which pulls those ratios towards 1. Nothing here is an assertion.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run_http  # noqa: E402  (the servers and databases of the HTTP benchmark, shared)
from run_http import PASSENGER, Config, Server  # noqa: E402

#: Valgrind runs the worker 30-50 times slower: starting it (numpy, scikit-learn, the model) takes a minute or two.
START_TIMEOUT = 600.0
#: Rows per writer transaction here (the warm-up is one batch, the counted requests whole batches).
BATCH_ROWS = 250
DELIVERY_TIMEOUT = 300.0


class CountedServer(Server):
    """A one-worker gunicorn under callgrind, counting nothing until told."""

    def __init__(self, config: Config, env: dict[str, str], log_path: Path, out_dir: Path) -> None:
        super().__init__(config, {**env, "WEB_CONCURRENCY": "1", "GUNICORN_TIMEOUT": "600"}, log_path)
        self.out_dir = out_dir

    def command(self) -> list[str]:
        return [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            "--trace-children=yes",
            f"--callgrind-out-file={self.out_dir}/callgrind.%p",
            *super().command(),
        ]

    def worker(self) -> int:
        assert self.proc is not None
        (pid,) = run_http.children(self.proc.pid)
        return pid


def post(port: int, body: bytes) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/api/predict", body=body, headers={"Content-Type": "application/json"})
        answer = conn.getresponse()
        text = answer.read()
    finally:
        conn.close()
    if answer.status != 200:
        raise RuntimeError(f"/api/predict answered {answer.status}: {text[:300]!r}")


def callgrind(server: CountedServer, pid: int, *options: str) -> None:
    """callgrind_control for the worker pid, with the server's environment: valgrind names the
    pipes it listens on after USER and HOST, and the server's HOST is its bind address."""
    done = subprocess.run(
        ["callgrind_control", *options, str(pid)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=server.env,
    )
    if done.returncode or "error" in done.stdout + done.stderr:
        raise RuntimeError(f"callgrind_control {' '.join(options)} failed:\n{done.stdout}{done.stderr}")


def counted(out_dir: Path, pid: int) -> int:
    """Instructions in the worker's dumps (`callgrind_control -d` writes callgrind.PID.N)."""
    total = 0
    for path in out_dir.glob(f"callgrind.{pid}.*"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
                break
    return total


def wait_delivered(spool_dir: Path, what: str) -> None:
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while run_http.spooled_rows(spool_dir):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: the writer did not deliver its spool within {DELIVERY_TIMEOUT:.0f} s")
        time.sleep(0.5)


def measure(config: Config, env: dict[str, str], work: Path, requests: int) -> float:
    """Instructions per request of one configuration's worker."""
    out_dir = work / f"callgrind-{config.key}"
    out_dir.mkdir()
    settings = {
        **run_http.server_env(config, env, work),
        "RECORDER_BATCH_ROWS": str(BATCH_ROWS),
        "RECORDER_FLUSH_SECONDS": "3600",
    }
    spool_dir = Path(settings["SPOOL_DIR"])
    server = CountedServer(config, settings, work / f"gunicorn-{config.key}.log", out_dir)
    body = json.dumps(PASSENGER).encode()
    delivers = config.recording and config.db_kind != "down"
    server.start(timeout=START_TIMEOUT)
    try:
        for _ in range(BATCH_ROWS):  # warm-up: one whole batch, delivered before counting starts
            post(server.port, body)
        if delivers:
            wait_delivered(spool_dir, config.name)
        pid = server.worker()
        callgrind(server, pid, "-i", "on")
        for _ in range(requests):
            post(server.port, body)
        if delivers:
            wait_delivered(spool_dir, config.name)
        callgrind(server, pid, "-i", "off")
        callgrind(server, pid, "-d")  # dump: callgrind.PID.1
        return counted(out_dir, pid) / requests
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--requests", type=int, default=4 * BATCH_ROWS, help=f"counted requests, whole batches of {BATCH_ROWS} [1000]"
    )
    parser.add_argument("--only", default="i,ii,iii,iv,v", help="configurations of run_http.py [i,ii,iii,iv,v]")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, callgrind files)")
    args = parser.parse_args(argv)
    if args.requests <= 0 or args.requests % BATCH_ROWS:
        parser.error(f"--requests must be a positive multiple of {BATCH_ROWS}")
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed: `apt-get install -y valgrind`", file=sys.stderr)
            return 2
    env = run_http.base_env()
    work = Path(tempfile.mkdtemp(prefix="titanic-count-"))
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closed.bind(("127.0.0.1", 0))  # the database that is down: a port nothing listens on
    down_port = closed.getsockname()[1]
    schema = None
    wanted = [k.strip() for k in args.only.split(",") if k.strip()]
    configs = {c.key: c for c in run_http.all_configs(work, down_port) if c.rows == 1}  # one passenger: i-v
    unknown = set(wanted) - set(configs)
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(sorted(unknown))}: choose from {', '.join(configs)}")
    print("# titanic-web: instructions per POST /api/predict in one gunicorn worker (valgrind callgrind)")
    for key, value in run_http.machine_base().items():
        print(f"{key + ':':<23}{value}")
    valgrind = subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    print(f"{'valgrind:':<23}{valgrind}")
    print(
        f"{'load:':<23}{args.requests} one-passenger requests one at a time after {BATCH_ROWS} unmeasured; "
        f"writer batches of {BATCH_ROWS} rows",
        flush=True,
    )
    counts: dict[str, float] = {}
    try:
        for key in wanted:
            config = configs[key]
            if config.database_url.startswith("sqlite:"):  # (ii) and (iii)
                run_http.init_db({**env, "DATABASE_URL": config.database_url})
            if config.db_kind == "postgres":
                schema, config.database_url = run_http.pg_create_schema()
                run_http.init_db({**env, "DATABASE_URL": config.database_url})
            started = time.monotonic()
            counts[key] = measure(config, env, work, args.requests)
            print(
                f"({key}) {config.name:<9}{counts[key]:12,.0f} instructions a request"
                f"   ({time.monotonic() - started:.0f} s)",
                flush=True,
            )
    finally:
        closed.close()
        if schema is not None:
            run_http.pg_drop_schema(schema)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print("ratios of instructions (what req/s ratios would be if the worker's instructions were all):")
    pairs = [
        ("ii", "i", "recording off / floor"),
        ("iii", "ii", "issue 3: SQLite / off"),
        ("iv", "ii", "issue 3: PostgreSQL / off (its server's work not counted)"),
        ("v", "ii", "database down / off"),
        ("iii", "i", "issue 4: SQLite / floor"),
    ]
    for top, bottom, label in pairs:
        if top in counts and bottom in counts:
            print(f"  {label:<60} {counts[bottom] / counts[top]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
