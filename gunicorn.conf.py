"""gunicorn settings: `gunicorn -c gunicorn.conf.py wsgi:app` (what `make run` does)."""

import os

# One thread per worker for OpenMP and BLAS: workers are the parallelism, and
# thread pools sized to every core in each worker oversubscribe the CPU. Set
# before a worker imports numpy or scikit-learn (workers load the app after fork).
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

# GET /metrics sums every worker's values, which prometheus_client keeps in files in this
# folder (one set per process). Set here, in the master, so every worker inherits it before
# it imports the library. One folder per server: it is emptied when the server starts.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip():
    _here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(_here, "instance", "prometheus")


def _setting(name, default):
    """The variable's value, or the default when it is unset or blank, as the app reads its own
    settings (a blank HOST must not become gunicorn's ':8000', which listens on every interface).

    Not titanic_web.config's readers: importing the package here would load the app's libraries
    (scikit-learn, pandas) into the master, which serves no request."""
    return os.environ.get(name, "").strip() or default


def _whole_number(name, default, minimum):
    text = _setting(name, str(default))
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise SystemExit(f"{name} must be a whole number of at least {minimum}, got {text!r}")
    return value


bind = f"{_setting('HOST', '127.0.0.1')}:{_setting('PORT', '8000')}"
workers = _whole_number("WEB_CONCURRENCY", 2, minimum=1)
worker_class = "sync"
timeout = _whole_number("GUNICORN_TIMEOUT", 60, minimum=0)  # 0: no limit
# The recorder drains within RECORDER_SHUTDOWN_SECONDS (10 by default), well inside this.
graceful_timeout = 30
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# The interpreter's switch interval in each worker (see post_worker_init).
SWITCH_INTERVAL_SECONDS = 0.05
# Allocations between two young-generation collections in each worker (700 by default; see post_worker_init).
GC_YOUNG_THRESHOLD = 50_000
# Each worker loads the model itself: nothing is shared through fork.
preload_app = False
# gunicorn's control socket is one fixed path per user: two servers on one
# machine (or a server and the system tests) would replace each other's. Unused here.
control_socket_disable = True


def _recorder(app):
    extensions = getattr(app, "extensions", None) or {}
    service = extensions.get("titanic")
    return None if service is None else service.recorder


def post_fork(server, worker):
    """With preload_app, the master's database connections must not be shared by workers."""
    if preload_app:
        from titanic_web.extensions import db

        with worker.app.wsgi().app_context():
            db.engine.dispose(close=False)


def post_worker_init(worker):
    """Pin thread pools, freeze the loaded app out of the garbage collector's sight, then
    start this worker's recorder (it first delivers what stopped workers left spooled)."""
    import gc
    import sys

    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=int(os.environ["OMP_NUM_THREADS"]))
    # A sync worker runs one request at a time beside the recorder's writer thread. With the
    # default 5 ms, whenever both want the interpreter lock they trade it every 5 ms, and
    # every trade costs both threads; the writer gives the lock back by itself at each
    # database call, so a longer interval only ends those forced trades (about 30 us of CPU
    # a request while the writer delivers, measured in-process; bench/README.md).
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    # The app, its libraries and the model live as long as the worker: without this every
    # full collection walks them again (about a quarter of a 100,000-row batch's time here).
    gc.collect()
    gc.freeze()
    # Requests free what they allocate by reference counting; the collector is for cycles. By
    # default it runs every 700 allocations, and a batch request, which holds thousands of rows
    # alive while it works, was scanned about 900 times per 100,000 passengers for nothing to
    # free: about a tenth of its time. One-passenger requests do not notice (bench/README.md).
    gc.set_threshold(GC_YOUNG_THRESHOLD)
    recorder = _recorder(worker.wsgi)
    if recorder is not None:
        recorder.start()
    # Follow the model registry's ACTIVE pointer: switch versions live, without a restart.
    watcher = (getattr(worker.wsgi, "extensions", None) or {}).get("titanic.model_watcher")
    if watcher is not None:
        watcher.start()


def worker_exit(server, worker):
    """Drain this worker's spool to the database before it exits; what is left stays spooled."""
    recorder = _recorder(getattr(worker, "wsgi", None))
    if recorder is not None:
        recorder.stop(timeout=worker.wsgi.config["RECORDER_SHUTDOWN_SECONDS"])


def on_starting(server):
    """Empty the metrics folder: values left by an earlier server must not count in this one's totals."""
    import glob

    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(directory, exist_ok=True)
    for path in glob.glob(os.path.join(directory, "*.db")):  # only the library's files, whatever else is there
        os.remove(path)


def child_exit(server, worker):
    """A worker has exited: drop its live gauges (backlog, model) from /metrics; its counters stay in the totals."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, os.environ["PROMETHEUS_MULTIPROC_DIR"])
