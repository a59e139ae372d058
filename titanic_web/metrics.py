"""The Prometheus metrics: what GET /metrics exports, one :class:`Metrics` per app.

Under gunicorn every worker is its own process, so prometheus_client runs in
multiprocess mode: each process writes its values to files in
PROMETHEUS_MULTIPROC_DIR and /metrics sums the files of every worker, live or
dead (gunicorn.conf.py empties the folder when the server starts and tells the
library when a worker exits). Outside gunicorn (``flask run``, the test client)
the values live in the process's memory, in the app's own registry.

Importing this module creates no metric and reads no setting: :meth:`Metrics.create`
does, when the app is created.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from titanic_web.schema import FIELD_NAMES

#: Request latency buckets (seconds): a one-passenger request takes about half a millisecond,
#: a 100,000-row file a few seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Survival probability buckets: tenths.
PROBABILITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: Upper bounds as prometheus_client keeps them (+Inf last); a value goes to the first bound >= it.
_PROBABILITY_BOUNDS = (*PROBABILITY_BUCKETS, float("inf"))
_PROBABILITY_ARRAY = np.array(_PROBABILITY_BOUNDS)

#: The environment variable prometheus_client reads for its folder of per-process files.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def probability_counts(probabilities: Sequence[float] | np.ndarray) -> list[int]:
    """How many probabilities fall in each bucket of :data:`PROBABILITY_BUCKETS` (+Inf last)."""
    if len(probabilities) < 16:  # a request of a few passengers: numpy's set-up costs more than it saves
        counts = [0] * len(_PROBABILITY_BOUNDS)
        for p in probabilities:
            counts[bisect.bisect_left(_PROBABILITY_BOUNDS, p)] += 1
        return counts
    index = np.searchsorted(_PROBABILITY_ARRAY, np.asarray(probabilities, dtype=float), side="left")
    return [int(n) for n in np.bincount(index, minlength=len(_PROBABILITY_BOUNDS))]


def add_counts(histogram: Histogram, counts: Sequence[int], total: float) -> None:
    """Add observations already counted per bucket, as that many ``observe`` calls would.

    ``observe`` takes one value at a time, which for a 100,000-row file costs more
    than predicting it. prometheus_client keeps a histogram as one value per
    bucket (not cumulative) and a sum; tests check this against ``observe``.
    """
    buckets = histogram._buckets  # no public bulk API: see the docstring
    if len(counts) != len(buckets):
        raise ValueError(f"{len(counts)} bucket counts for a histogram of {len(buckets)} buckets")
    for bucket, count in zip(buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(total)


def use_directory(directory: Path | None) -> None:
    """Keep values in per-process files in directory (multiprocess mode), or in memory (None).

    prometheus_client picks its value class from the environment when it is
    first imported; the app decides when it is created, so the choice is made
    (again) here. Under gunicorn the two agree: gunicorn.conf.py sets the
    variable before any worker imports the library.
    """
    multiprocess = bool(getattr(values.ValueClass, "_multiprocess", False))
    if directory is None:
        if multiprocess:
            values.ValueClass = values.MutexValue
        return
    wanted = str(directory)
    Path(wanted).mkdir(parents=True, exist_ok=True)
    if not multiprocess or os.environ.get(MULTIPROC_ENV) != wanted:
        os.environ[MULTIPROC_ENV] = wanted  # the library reads it when it opens each process's file
        values.ValueClass = values.MultiProcessValue()


def field_label(field: str | None) -> str:
    """A validation failure's field as a label: a schema field, ``row`` (the whole row) or ``unknown``.

    Unknown field names come from clients, so they share one label: a metric's
    label values must stay a small, fixed set.
    """
    if field is None:
        return "row"
    return field if field in FIELD_NAMES else "unknown"


class Metrics:
    """Every metric the app exports, and the registry /metrics renders."""

    def __init__(self, *, directory: Path | None = None) -> None:
        use_directory(directory)
        self.directory = directory
        # Multiprocess mode: the metrics belong to no registry (their values are files), and
        # /metrics renders a registry whose one collector merges every process's files.
        self.registry = CollectorRegistry()
        own: CollectorRegistry | None = self.registry
        if directory is not None:
            own = None
            MultiProcessCollector(self.registry, path=str(directory))

        self.requests = Counter(
            "titanic_http_requests",
            "HTTP requests answered, by endpoint and status.",
            ["endpoint", "status"],
            registry=own,
        )
        self.request_seconds = Histogram(
            "titanic_http_request_duration_seconds",
            "Time from a request's arrival until its answer was ready.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.predictions = Counter(
            "titanic_predictions",
            "Passengers predicted and answered, by predicted class (1: survived).",
            ["survived"],
            registry=own,
        )
        self.probability = Histogram(
            "titanic_prediction_probability",
            "Predicted survival probability of each answered passenger.",
            buckets=PROBABILITY_BUCKETS,
            registry=own,
        )
        self.validation_failures = Counter(
            "titanic_validation_failures",
            "Field errors in answers refused with 422 (API, batch file and form), by field and source.",
            ["field", "source"],
            registry=own,
        )
        self.backlog = Gauge(
            "titanic_recorder_backlog_rows",
            "Answered rows spooled and not yet written to the database.",
            registry=own,
            multiprocess_mode="livesum",
        )
        self.rows_spooled = Counter(
            "titanic_recorder_rows_spooled",
            "Rows kept in the local spool for the database.",
            registry=own,
        )
        self.rows_written = Counter(
            "titanic_recorder_rows_written",
            "Rows newly written to the database by the recorder.",
            registry=own,
        )
        self.write_failures = Counter(
            "titanic_recorder_write_failures",
            "Database writes that failed and will be retried (the rows stay spooled).",
            registry=own,
        )
        self.rows_quarantined = Counter(
            "titanic_recorder_rows_quarantined",
            "Rows set aside in a .bad file instead of the database: unreadable spool lines, and rows it refused.",
            registry=own,
        )
        self.model = Gauge(
            "titanic_model_info",
            "The model version answering (1) or answering no longer (0).",
            ["version"],
            registry=own,
            multiprocess_mode="livemax",
        )
        self._version: str | None = None
        self._model_lock = threading.Lock()  # requests and the model watcher's thread both set it
        # labels() takes a lock and builds a key on every call: keep the children a request uses.
        self._request_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._classes = (self.predictions.labels(survived="0"), self.predictions.labels(survived="1"))

    @property
    def multiprocess(self) -> bool:
        """True when values are shared through files in :attr:`directory`."""
        return self.directory is not None

    def observe_request(self, endpoint: str | None, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        key = (endpoint or "none", status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(endpoint=key[0], status=str(status)),
                self.request_seconds.labels(endpoint=key[0]),
            )
        children[0].inc()
        children[1].observe(seconds)

    def observe_predictions(self, *, rows: int, survived: int, counts: Sequence[int], total: float) -> None:
        """Count answered passengers by class, and their probabilities (bucket counts and sum)."""
        if survived:
            self._classes[1].inc(survived)
        if rows - survived:
            self._classes[0].inc(rows - survived)
        add_counts(self.probability, counts, total)

    def count_validation_failures(self, fields: Iterable[tuple[str | None, str, int]]) -> None:
        """Count field errors of a refused request: (field, source, how many errors)."""
        by_label: dict[tuple[str, str], int] = {}  # many unknown fields share one label: one inc() for them
        for field, source, count in fields:
            key = (field_label(field), source)
            by_label[key] = by_label.get(key, 0) + count
        for (label, source), count in by_label.items():
            self.validation_failures.labels(field=label, source=source).inc(count)

    def set_model_version(self, version: str | None) -> None:
        """Mark version as the model answering (and the previous one as no longer answering).

        Called by the model watcher's thread when it switches, so that a worker that answers
        nothing says so too, and after each request and scrape."""
        if version == self._version:
            return
        with self._model_lock:
            if version == self._version:
                return
            if self._version is not None:
                self.model.labels(version=self._version).set(0)
            if version is not None:
                self.model.labels(version=version).set(1)
            self._version = version

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition text for an Accept header: (body, content type)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
