"""Batch benchmark: a 100,000-passenger CSV through POST /api/predict, against pandas and the pipeline.

    .venv/bin/python bench/bench_batch.py [--rows N] [--requests N] [--workers N] [--keep]

1. Writes a CSV in the competition's test.csv layout into a temporary folder: the
   rows of model/data/test.csv repeated, with PassengerIds 1..N.
2. Starts the real app as bench/run_http.py does (`gunicorn -c gunicorn.conf.py
   wsgi:app` on a free 127.0.0.1 port; recording on, to a SQLite file made by
   `flask --app titanic_web init-db`; its own SPOOL_DIR; WEB_CONCURRENCY=1 by
   default, so one worker answers and its memory is the request's), and a second
   Python process holding the plain pipeline (the active version in model/registry,
   through registry.load_predictor), so that each process's memory is its own.
3. Posts model/data/test.csv once and runs the pipeline on the file once (warm-ups,
   not measured), then runs rounds. Each round waits
   until the worker's writer has delivered everything spooled, posts the file
   (requests, streamed from disk; Content-Type text/csv, Accept: text/csv) and
   times it to the last byte of the answer; times the writer's delivery of those
   rows to SQLite (until the spool has nothing left to deliver); then has the
   other process time pandas.read_csv(file) + pipeline.predict_proba(frame).
   Both are timed on the same idle machine moments apart: the ratio is taken
   within each round and its median reported.
4. Reports the worker's VmRSS before the first request and VmHWM after the last,
   and the other process's RSS after loading and its ru_maxrss; checks that each
   answer has N data lines, PassengerIds 1..N in order and the pipeline's
   Survived; stops the server by pid (SIGTERM: the recorder drains; SIGKILL of
   the process group if it hangs) and counts the rows in the database, and any
   left in the spool (titanic_web.spool.scan), against those answered.

The targets are printed as met / NOT met lines: timings are never assertions.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from bench.run_http import (  # noqa: E402
    SERVER_PYTHON,
    Config,
    Server,
    _version,
    base_env,
    children,
    cpu_seconds,
    init_db,
    machine_base,
    median,
)

TEST_CSV = PROJECT / "model" / "data" / "test.csv"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
TARGET_RATIO = 1.5  # end to end <= this times read_csv + predict_proba
TARGET_PEAK_MB = 300.0  # the worker's peak memory (VmHWM), in MB of 10^6 bytes


# -- the file ---------------------------------------------------------------------------------


def write_csv(path: Path, rows: int) -> int:
    """The rows of test.csv repeated to `rows` lines, PassengerIds 1..rows; returns the size in bytes."""
    with open(TEST_CSV, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        source = [row for row in reader if row]
    pid = header.index("PassengerId")
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        for n in range(rows):
            row = list(source[n % len(source)])
            row[pid] = str(n + 1)
            writer.writerow(row)
    return path.stat().st_size


# -- memory -----------------------------------------------------------------------------------


def status_kb(pid: int | str, field: str) -> int | None:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM), None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def mb(kb: int | None) -> float:
    """kB (KiB, as /proc and ru_maxrss count) to MB of 10^6 bytes."""
    return float("nan") if kb is None else kb * 1024 / 1e6


# -- the other process: read_csv + predict_proba ------------------------------------------------


def baseline_child(csv_path: Path, model_dir: Path) -> int:
    """Serve timing requests on stdin ("run", "quit"), one JSON line on stdout for each."""
    import resource

    import pandas as pd
    from threadpoolctl import threadpool_limits

    from titanic_web import registry

    predictor = registry.load_predictor(model_dir)
    pipeline, threshold = predictor.pipeline, predictor.threshold
    threadpool_limits(limits=1)  # as in a gunicorn worker (gunicorn.conf.py)

    def emit(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    emit({"ready": True, "rss_kb": status_kb("self", "VmRSS"), "pandas": pd.__version__})
    for line in sys.stdin:
        command = line.strip()
        if command == "run":
            cpu0, t0 = time.process_time(), time.perf_counter()
            frame = pd.read_csv(csv_path)
            t1 = time.perf_counter()
            probabilities = pipeline.predict_proba(frame)[:, 1]
            t2, cpu1 = time.perf_counter(), time.process_time()
            survived = "".join("1" if p >= threshold else "0" for p in probabilities.tolist())
            emit(
                {
                    "seconds": t2 - t0,
                    "read_csv": t1 - t0,
                    "predict_proba": t2 - t1,
                    "cpu": cpu1 - cpu0,
                    "rows": len(probabilities),
                    "survived": survived,
                }
            )
        elif command == "quit":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            emit({"maxrss_kb": usage.ru_maxrss, "rss_kb": status_kb("self", "VmRSS")})
            return 0
    return 0


class Baseline:
    """The read_csv + predict_proba process, started once and asked to time a run at a time."""

    def __init__(self, csv_path: Path, model_dir: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [
                str(SERVER_PYTHON),  # the servers' install: its memory is compared with theirs
                str(Path(__file__).resolve()),
                "--baseline-child",
                str(csv_path),
                "--model-dir",
                str(model_dir),
            ],
            cwd=PROJECT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the baseline process ended ({self.proc.wait()})")
        return dict(json.loads(line))

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> dict[str, Any]:
        result = self.ask("quit")
        self.proc.wait(timeout=30)
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- the server side ----------------------------------------------------------------------------


def undelivered(spool_dir: Path) -> bool:
    """Anything spooled and not yet delivered? A segment's lines run from its start without a
    gap, and the rest of a preallocated segment is zeros, so one byte at its .done offset
    says: a line there, or nothing (zero, or the end of the file).

    Reads no whole line, so it can be polled while the writer works.
    """
    from titanic_web import spool

    for path in spool_dir.glob(f"*{spool.SUFFIX}"):
        done_path = path.with_name(path.name + spool.DONE_SUFFIX)
        try:
            done = int(done_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            done = 0
        try:
            with path.open("rb") as segment:
                segment.seek(done)
                if segment.read(1) not in (b"", b"\0"):
                    return True
        except FileNotFoundError:
            continue  # delivered and removed meanwhile
    return False


def wait_delivered(spool_dir: Path, timeout: float) -> float | None:
    """Seconds until the spool holds nothing undelivered (None: still not after timeout)."""
    began = time.perf_counter()
    while time.perf_counter() - began < timeout:
        if not undelivered(spool_dir):
            return time.perf_counter() - began
        time.sleep(0.05)
    return None


def post_file(session: Any, url: str, path: Path) -> tuple[int, bytes, float]:
    """POST a CSV file streamed from disk, asking for a CSV answer: (status, body, wall seconds)."""
    began = time.perf_counter()
    with open(path, "rb") as fh:
        with session.post(
            url, data=fh, headers={"Content-Type": "text/csv", "Accept": "text/csv"}, stream=True, timeout=600
        ) as response:
            content = b"".join(response.iter_content(1 << 16))
            status = response.status_code
    return status, content, time.perf_counter() - began


def check_answer(content: bytes, rows: int, expected_survived: str) -> str:
    """What is wrong with a submission of `rows` passengers ("" when nothing)."""
    lines = content.decode().splitlines()
    if not lines or lines[0] != "PassengerId,Survived":
        return f"header {lines[0][:60] if lines else '(empty)'}"
    data = lines[1:]
    if len(data) != rows:
        return f"{len(data)} data lines, expected {rows}"
    pairs = [line.split(",") for line in data]
    if [p[0] for p in pairs] != [str(n) for n in range(1, rows + 1)]:
        return "PassengerIds are not 1..N in order"
    got = "".join(p[1] for p in pairs)
    if got != expected_survived:
        wrong = sum(a != b for a, b in zip(got, expected_survived))
        return f"Survived differs from the pipeline's on {wrong} of {rows} passengers"
    return ""


def database_counts(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as conn:
        predictions = int(conn.execute("SELECT count(*) FROM predictions").fetchone()[0])
        features = int(conn.execute("SELECT count(*) FROM feature_store").fetchone()[0])
    return predictions, features


# -- the report ---------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    return {**machine_base(), "requests": _version("requests")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000, help="passengers in the CSV file [100000]")
    parser.add_argument("--requests", type=int, default=5, help="measured rounds: one POST and one baseline each [5]")
    parser.add_argument("--workers", type=int, default=1, help="WEB_CONCURRENCY of the server [1]")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=300,
        help="longest wait for the writer to deliver a request's rows [300 s]",
    )
    parser.add_argument("--model-dir", type=Path, default=None, help="[MODEL_DIR or model/registry]")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (file, log, database)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--baseline-child", type=Path, help=argparse.SUPPRESS)  # the other process
    args = parser.parse_args(argv)

    env = base_env()
    model_dir = args.model_dir or Path(env["MODEL_DIR"])
    if args.baseline_child is not None:
        return baseline_child(args.baseline_child, model_dir)
    from titanic_web import registry
    from titanic_web.predictor import ModelError

    try:
        registry.model_path(model_dir)
    except ModelError as exc:
        print(f"{exc} (make bench trains one)", file=sys.stderr)
        return 2
    import requests

    info = machine()
    print(
        f"# titanic-web batch benchmark: POST /api/predict with a {args.rows:,}-passenger CSV, "
        "against pandas.read_csv + pipeline.predict_proba"
    )
    for k, v in info.items():
        print(f"{k + ':':<23}{v}")
    python = os.path.relpath(sys.executable, PROJECT) if sys.executable.startswith(str(PROJECT)) else sys.executable
    print(f"{'command:':<23}{' '.join([python, 'bench/bench_batch.py', *(sys.argv[1:] if argv is None else argv)])}")

    work = Path(tempfile.mkdtemp(prefix="titanic-bench-batch-"))
    server: Server | None = None
    baseline: Baseline | None = None
    began = time.monotonic()
    try:
        csv_path = work / "passengers.csv"
        size = write_csv(csv_path, args.rows)
        db_path = work / "batch.db"
        spool_dir = work / "spool"
        server_env = {
            **env,
            "MODEL_DIR": str(model_dir),
            "DATABASE_URL": f"sqlite:///{db_path}",
            "SPOOL_DIR": str(spool_dir),
            "BATCH_DIR": str(work / "batches"),
            "RECORDING": "true",
            "PROMETHEUS_MULTIPROC_DIR": str(work / "prometheus"),
            "WEB_CONCURRENCY": str(args.workers),
        }
        print(
            f"{'file:':<23}{csv_path.name}: {args.rows:,} passengers, {size / 1e6:.1f} MB "
            f"(model/data/test.csv repeated, PassengerIds 1..{args.rows})"
        )
        print(
            f"{'server:':<23}gunicorn -c gunicorn.conf.py wsgi:app, WEB_CONCURRENCY={args.workers}, recording on "
            "to SQLite (flask init-db), MAX_ROWS and the rest at their defaults"
        )
        print(flush=True)
        init_db(server_env)
        config = Config("batch", "sqlite", "wsgi:app", True, "loaded from", server_env["DATABASE_URL"], "sqlite")
        server = Server(config, server_env, work / "gunicorn.log")
        server.start()
        assert server.proc is not None
        workers = children(server.proc.pid)
        rss_start = {pid: status_kb(pid, "VmRSS") for pid in workers}
        hwm_start = {pid: status_kb(pid, "VmHWM") for pid in workers}
        print(
            f"started on port {server.port}: master {server.proc.pid}, worker(s) {', '.join(map(str, workers))}; "
            "VmRSS before the first request " + ", ".join(f"{mb(v):.0f} MB" for v in rss_start.values()),
            flush=True,
        )

        child_env = {**env, **{name: "1" for name in THREAD_VARIABLES}}
        baseline = Baseline(csv_path, model_dir, child_env)
        warm = baseline.ask("run")  # its warm-up, as the server has one: the first call pays for lazy set-up
        expected_survived = str(warm["survived"])
        print(
            f"baseline process {baseline.proc.pid}: pipeline loaded, VmRSS {mb(baseline.ready['rss_kb']):.0f} MB;"
            f" warm-up run on the file {warm['seconds']:.2f} s",
            flush=True,
        )

        url = f"{server.base}/api/predict"
        session = requests.Session()
        status, content, seconds = post_file(session, url, TEST_CSV)  # warm-up: 418 passengers
        warm_rows = len(content.decode().splitlines()) - 1 if status == 200 else 0
        if status != 200:
            raise RuntimeError(f"warm-up POST of {TEST_CSV.name} answered {status}: {content[:300]!r}")
        hwm_warm = {pid: status_kb(pid, "VmHWM") for pid in workers}
        print(
            f"warm-up: {TEST_CSV.name} ({warm_rows} passengers) in {seconds:.2f} s; worker VmHWM "
            + ", ".join(f"{mb(v):.0f} MB" for v in hwm_warm.values()),
            flush=True,
        )

        rounds: list[dict[str, Any]] = []
        answered = 0
        problems: list[str] = []
        for n in range(1, args.requests + 1):
            idle = wait_delivered(spool_dir, args.drain_timeout)
            cpu_before = sum(cpu_seconds(pid) or 0.0 for pid in workers)
            status, content, seconds = post_file(session, url, csv_path)
            cpu = sum(cpu_seconds(pid) or 0.0 for pid in workers) - cpu_before
            if status != 200:
                raise RuntimeError(f"round {n}: POST answered {status}: {content[:500]!r}")
            answered += 1
            drain = wait_delivered(spool_dir, args.drain_timeout)
            base = baseline.ask("run")
            problem = check_answer(content, args.rows, expected_survived)
            if problem:
                problems.append(f"round {n}: {problem}")
            hwm = max(status_kb(pid, "VmHWM") or 0 for pid in workers)
            record = {
                "round": n,
                "post_s": seconds,
                "worker_cpu_s": cpu,
                "drain_s": drain,
                "waited_before_s": idle,
                "baseline_s": base["seconds"],
                "read_csv_s": base["read_csv"],
                "predict_proba_s": base["predict_proba"],
                "baseline_cpu_s": base["cpu"],
                "ratio": seconds / base["seconds"],
                "cpu_ratio": cpu / base["cpu"],
                "hwm_kb": hwm,
                "answer_lines": len(content.splitlines()) - 1,
            }
            rounds.append(record)
            print(
                f"round {n}: POST {seconds:6.2f} s (worker CPU {cpu:5.2f} s)   delivery to SQLite "
                + ("not done" if drain is None else f"{drain:5.1f} s")
                + f"   read_csv {base['read_csv']:.2f} s + predict_proba {base['predict_proba']:.2f} s = "
                f"{base['seconds']:.2f} s   ratio {record['ratio']:.2f}   worker VmHWM {mb(hwm):.0f} MB"
                + (f"   {problem}" if problem else ""),
                flush=True,
            )

        rss_end = {pid: status_kb(pid, "VmRSS") for pid in workers}
        hwm_end = {pid: status_kb(pid, "VmHWM") for pid in workers}
        ready_rss = baseline.ready["rss_kb"]
        child = baseline.close()
        baseline = None
        stop_seconds = server.stop()
        server = None
        predictions, feature_rows = database_counts(db_path)
        from titanic_web import spool

        left = spool.scan(spool_dir)
        expected_rows = answered * args.rows + warm_rows

        post = median([r["post_s"] for r in rounds])
        base_s = median([r["baseline_s"] for r in rounds])
        ratio = median([r["ratio"] for r in rounds])
        cpu_ratio = median([r["cpu_ratio"] for r in rounds])
        peak = max(v or 0 for v in hwm_end.values())
        drains = [r["drain_s"] for r in rounds if r["drain_s"] is not None]
        print(
            f"\nfinished in {time.monotonic() - began:.0f} s; load average at the end "
            + " ".join(f"{x:.2f}" for x in os.getloadavg())
        )
        print(f"\nmedians of {len(rounds)} round(s), wall time (CPU time in brackets)")
        print(
            f"  POST /api/predict, {args.rows:,} passengers, CSV in and out  {post:6.2f} s   "
            f"[{median([r['worker_cpu_s'] for r in rounds]):.2f} s worker CPU]   "
            f"{args.rows / post:,.0f} passengers/s"
        )
        print(
            f"  pandas.read_csv + pipeline.predict_proba              {base_s:6.2f} s   "
            f"[{median([r['baseline_cpu_s'] for r in rounds]):.2f} s CPU]   read_csv "
            f"{median([r['read_csv_s'] for r in rounds]):.2f} s, predict_proba "
            f"{median([r['predict_proba_s'] for r in rounds]):.2f} s"
        )
        print(
            f"  ratio (median of within-round ratios)                 {ratio:6.2f}x  "
            f"[CPU {cpu_ratio:.2f}x]   rounds {min(r['ratio'] for r in rounds):.2f}-"
            f"{max(r['ratio'] for r in rounds):.2f}x"
        )
        print(
            f"  the writer's delivery of a request's rows to SQLite    {median(drains):6.1f} s   "
            f"(after the answer; {args.rows / median(drains):,.0f} rows/s)"
            if drains
            else "  the writer's delivery: not done within --drain-timeout"
        )
        print("\nmemory (MB of 10^6 bytes)")
        print(
            "  worker VmRSS before the first request "
            + ", ".join(f"{mb(v):.0f}" for v in rss_start.values())
            + "; VmHWM then "
            + ", ".join(f"{mb(v):.0f}" for v in hwm_start.values())
            + ", after the warm-up "
            + ", ".join(f"{mb(v):.0f}" for v in hwm_warm.values())
            + f", after the {args.rows:,}-row requests "
            + ", ".join(f"{mb(v):.0f}" for v in hwm_end.values())
            + "; VmRSS at the end "
            + ", ".join(f"{mb(v):.0f}" for v in rss_end.values())
        )
        print(
            f"  baseline process: VmRSS after loading the pipeline {mb(ready_rss):.0f}; "
            f"peak (ru_maxrss) {mb(child['maxrss_kb']):.0f}"
        )
        print("\nchecks")
        print(
            f"  answers: {answered} x {args.rows:,} data lines, PassengerIds 1..{args.rows} in order, Survived as the"
            " pipeline's: " + ("all correct" if not problems else "; ".join(problems))
        )
        where = f"{predictions:,} rows in predictions, {feature_rows:,} in feature_store"
        if left["rows"]:
            where += f", {left['rows']:,} still spooled"
        kept = predictions + left["rows"] == expected_rows and feature_rows == predictions
        print(
            f"  stored after the stop ({stop_seconds:.1f} s, SIGTERM): {where}; expected {expected_rows:,} "
            f"({answered} x {args.rows:,} + {warm_rows} warm-up): {'all kept' if kept else 'NOT ALL KEPT'}"
        )
        print("\ntargets (figures, not assertions):")
        print(
            f"  {'met    ' if ratio <= TARGET_RATIO else 'NOT met'}  end to end / (read_csv + predict_proba) = "
            f"{ratio:.2f}   (target <= {TARGET_RATIO:.2f})"
        )
        print(
            f"  {'met    ' if mb(peak) < TARGET_PEAK_MB else 'NOT met'}  worker peak memory (VmHWM) = "
            f"{mb(peak):.0f} MB   (target < {TARGET_PEAK_MB:.0f} MB)"
        )
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "machine": info,
                        "args": {k: str(v) for k, v in vars(args).items()},
                        "rounds": rounds,
                        "worker": {
                            "rss_start_kb": rss_start,
                            "hwm_start_kb": hwm_start,
                            "hwm_warm_kb": hwm_warm,
                            "hwm_end_kb": hwm_end,
                            "rss_end_kb": rss_end,
                        },
                        "baseline": {"rss_ready_kb": ready_rss, "end": child},
                        "stored": {
                            "predictions": predictions,
                            "feature_store": feature_rows,
                            "spooled": left["rows"],
                            "expected": expected_rows,
                        },
                    },
                    indent=2,
                    default=str,
                )
            )
    finally:
        if baseline is not None:
            baseline.kill()
        if server is not None:
            server.stop()
        if args.keep:
            print(f"\nthe file, the log and the database kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
