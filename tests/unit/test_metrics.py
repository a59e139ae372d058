"""The metrics helpers: probability buckets counted in bulk, labels kept to a fixed set, the two value modes."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, values
from prometheus_client.parser import text_string_to_metric_families

from titanic_web.metrics import (
    MULTIPROC_ENV,
    PROBABILITY_BUCKETS,
    Metrics,
    add_counts,
    field_label,
    probability_counts,
    use_directory,
)
from titanic_web.schema import FIELD_NAMES


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample a registry exposes, keyed by name and labels (the _created times left out)."""
    out = {}
    for family in registry.collect():
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram("p", "probabilities", buckets=PROBABILITY_BUCKETS, registry=registry)


@pytest.fixture
def in_memory() -> Iterator[None]:
    """Tests here leave prometheus_client in its in-memory mode, whatever they switch."""
    yield
    use_directory(None)


#: Values on and around every bound (a value equal to a bound belongs to that bound's bucket).
EDGES = [0.0, 1e-12, *PROBABILITY_BUCKETS, *(b + 1e-12 for b in PROBABILITY_BUCKETS[:-1]), 1.0 - 1e-12, 1.0]


@pytest.mark.parametrize("size", [1, 5, 15, 16, 2000], ids=lambda n: f"{n}-values")
def test_bulk_counts_equal_one_observe_per_value(size: int) -> None:
    rng = random.Random(size)
    probabilities = [rng.random() for _ in range(size)]
    if size >= len(EDGES):
        probabilities[: len(EDGES)] = EDGES
    by_observe, by_counts = CollectorRegistry(), CollectorRegistry()
    one_at_a_time = histogram(by_observe)
    for p in probabilities:
        one_at_a_time.observe(p)

    add_counts(histogram(by_counts), probability_counts(probabilities), sum(probabilities))

    assert samples(by_counts) == pytest.approx(samples(by_observe))
    assert samples(by_counts)[("p_count", ())] == size


def test_edges_fall_in_the_bucket_of_their_bound() -> None:
    counts = probability_counts([0.1, 0.5, 1.0, 0.0])
    assert counts == [2, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0]  # 0.0 and 0.1 in le=0.1, 0.5 in le=0.5, 1.0 in le=1.0
    assert probability_counts([]) == [0] * (len(PROBABILITY_BUCKETS) + 1)


def test_bucket_counts_of_another_length_are_refused() -> None:
    with pytest.raises(ValueError, match="3 bucket counts for a histogram of 11 buckets"):
        add_counts(histogram(CollectorRegistry()), [1, 2, 3], 1.0)


def test_field_labels_stay_a_fixed_set() -> None:
    assert [field_label(name) for name in FIELD_NAMES] == list(FIELD_NAMES)
    assert field_label(None) == "row"
    assert field_label("Agee") == field_label("x" * 10_000) == "unknown"


def test_requests_predictions_and_model_version_are_exported(in_memory: None) -> None:
    metrics = Metrics()
    for status in (200, 200, 422):
        metrics.observe_request("api.predict", status, 0.002)
    metrics.observe_request(None, 404, 0.0001)
    metrics.observe_predictions(rows=3, survived=1, counts=probability_counts([0.05, 0.3, 0.95]), total=1.3)
    metrics.count_validation_failures(
        [("Age", "api", 1), ("Agee", "api", 1), ("Age", "form", 1), ("Fare", "batch", 1500), ("x", "api", 2)]
    )
    metrics.set_model_version("v1")
    metrics.set_model_version("v2")  # switched: v1 no longer answers

    body, content_type = metrics.render(None)
    assert content_type.startswith("text/plain")
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert got[("titanic_http_requests_total", (("endpoint", "api.predict"), ("status", "200")))] == 2
    assert got[("titanic_http_requests_total", (("endpoint", "api.predict"), ("status", "422")))] == 1
    assert got[("titanic_http_requests_total", (("endpoint", "none"), ("status", "404")))] == 1
    assert got[("titanic_http_request_duration_seconds_count", (("endpoint", "api.predict"),))] == 3
    assert got[("titanic_http_request_duration_seconds_bucket", (("endpoint", "api.predict"), ("le", "0.001")))] == 0
    assert got[("titanic_http_request_duration_seconds_bucket", (("endpoint", "api.predict"), ("le", "0.0025")))] == 3
    assert got[("titanic_predictions_total", (("survived", "0"),))] == 2
    assert got[("titanic_predictions_total", (("survived", "1"),))] == 1
    assert got[("titanic_prediction_probability_bucket", (("le", "0.1"),))] == 1
    assert got[("titanic_prediction_probability_bucket", (("le", "0.5"),))] == 2
    assert got[("titanic_prediction_probability_count", ())] == 3
    assert got[("titanic_prediction_probability_sum", ())] == pytest.approx(1.3)
    assert got[("titanic_validation_failures_total", (("field", "Age"), ("source", "api")))] == 1
    assert got[("titanic_validation_failures_total", (("field", "unknown"), ("source", "api")))] == 3
    assert got[("titanic_validation_failures_total", (("field", "Fare"), ("source", "batch")))] == 1500
    assert got[("titanic_validation_failures_total", (("field", "Age"), ("source", "form")))] == 1
    assert got[("titanic_model_info", (("version", "v1"),))] == 0
    assert got[("titanic_model_info", (("version", "v2"),))] == 1


def test_each_metrics_object_counts_for_itself_in_memory(in_memory: None) -> None:
    first, second = Metrics(), Metrics()
    first.rows_written.inc(5)
    assert samples(first.registry)[("titanic_recorder_rows_written_total", ())] == 5
    assert samples(second.registry)[("titanic_recorder_rows_written_total", ())] == 0


def test_a_directory_keeps_values_in_files_and_none_returns_to_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_memory: None
) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, "")  # so the variable is restored after the test, whatever the code sets
    monkeypatch.delenv(MULTIPROC_ENV)
    directory = tmp_path / "prometheus"

    shared = Metrics(directory=directory)  # the folder is made when missing
    shared.rows_spooled.inc(7)
    shared.backlog.set(4)

    assert shared.multiprocess and os.environ[MULTIPROC_ENV] == str(directory)
    files = sorted(p.name for p in directory.glob("*.db"))
    assert files == [f"{kind}_{os.getpid()}.db" for kind in ("counter", "gauge_livesum", "histogram")]
    got = samples(shared.registry)
    assert got[("titanic_recorder_rows_spooled_total", ())] == 7
    assert got[("titanic_recorder_backlog_rows", ())] == 4  # livesum: no pid label

    alone = Metrics()
    assert not alone.multiprocess and values.ValueClass is values.MutexValue
    alone.rows_spooled.inc(1)
    assert samples(alone.registry)[("titanic_recorder_rows_spooled_total", ())] == 1
    assert samples(shared.registry)[("titanic_recorder_rows_spooled_total", ())] == 7


def test_the_folder_setting_is_read_from_the_environment_when_settings_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from titanic_web.config import settings_from_env

    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    assert settings_from_env(tmp_path)["PROMETHEUS_MULTIPROC_DIR"] is None
    monkeypatch.setenv(MULTIPROC_ENV, " ")
    assert settings_from_env(tmp_path)["PROMETHEUS_MULTIPROC_DIR"] is None
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path / "prometheus"))
    assert settings_from_env(tmp_path)["PROMETHEUS_MULTIPROC_DIR"] == tmp_path / "prometheus"
