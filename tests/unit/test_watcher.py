"""The model watcher: follows the registry's pointer, loads off the request path, refuses bad versions."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import copy_into_registry
from tests.unit.test_registry import make_unloadable, tamper
from titanic_web import registry
from titanic_web.predictor import Predictor
from titanic_web.recorder import Recorder
from titanic_web.service import PredictionService
from titanic_web.watcher import ModelWatcher


class CountingLoader:
    """Predictor.from_dir, counting the loads (each one unpickles a model)."""

    def __init__(self) -> None:
        self.loaded: list[str] = []

    def __call__(self, path: Path) -> Predictor:
        self.loaded.append(path.name)
        return Predictor.from_dir(path)


@pytest.fixture
def service(model_registry: Path, tmp_path: Path) -> PredictionService:
    return PredictionService.from_model_dir(model_registry, recorder=Recorder(tmp_path / "spool"))


def versions(root: Path) -> tuple[str, str]:
    """(active, other) version names of a two-version registry."""
    active = registry.read_active(root)
    (other,) = [v.version for v in registry.versions(root) if v.version != active]
    assert active is not None
    return active, other


def test_a_new_pointer_is_loaded_and_swapped_in(model_registry: Path, service: PredictionService) -> None:
    first, second = versions(model_registry)
    loader = CountingLoader()
    watcher = ModelWatcher(service, model_registry, load=loader)
    assert service.require_predictor().version == first
    assert watcher.check() is False, "the pointer names the model already served"

    registry.write_active(model_registry, second)

    assert watcher.check() is True
    assert service.require_predictor().version == second
    assert watcher.check() is False, "an unchanged pointer costs a stat, never a load"
    assert loader.loaded == [second]


def test_a_request_keeps_the_predictor_it_started_with(model_registry: Path, service: PredictionService) -> None:
    first, second = versions(model_registry)
    in_flight = service.require_predictor()
    registry.write_active(model_registry, second)

    ModelWatcher(service, model_registry).check()

    assert in_flight.version == first  # the old object is untouched; the service holds the new one
    assert service.require_predictor().version == second


@pytest.mark.parametrize(
    ("damage", "why"),
    [(tamper, "does not match its card"), (make_unloadable, "cannot be loaded here (ModuleNotFoundError")],
    ids=["tampered", "fails-to-unpickle"],
)
def test_a_version_that_cannot_be_loaded_is_refused_with_a_log_line_and_not_retried(
    model_registry: Path,
    service: PredictionService,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[Path], None],
    why: str,
) -> None:
    first, second = versions(model_registry)
    damage(model_registry / second)
    loader = CountingLoader()
    watcher = ModelWatcher(service, model_registry, load=loader)
    registry.write_active(model_registry, second)

    with caplog.at_level(logging.ERROR, logger="titanic_web.watcher"):
        assert watcher.check() is False
        assert watcher.check() is False

    assert service.require_predictor().version == first
    assert loader.loaded == [second], "a refused version is tried once per pointer write"
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"model version {second} refused" in line
    assert why in line
    assert f"still serving {first}" in line


def test_a_pointer_to_a_missing_version_keeps_the_current_model(
    model_registry: Path, service: PredictionService, caplog: pytest.LogCaptureFixture
) -> None:
    first, _ = versions(model_registry)
    registry.write_active(model_registry, "0123456789ab")

    with caplog.at_level(logging.ERROR, logger="titanic_web.watcher"):
        assert ModelWatcher(service, model_registry).check() is False

    assert service.require_predictor().version == first
    assert "0123456789ab" in caplog.text


def test_a_card_naming_another_version_is_refused(model_registry: Path, service: PredictionService) -> None:
    first, second = versions(model_registry)
    renamed = model_registry / "fedcba987654"
    (model_registry / second).rename(renamed)  # a folder whose name is not its card's version
    assert json.loads((renamed / "model.json").read_text())["version"] == second
    registry.write_active(model_registry, renamed.name)

    assert ModelWatcher(service, model_registry).check() is False
    assert service.require_predictor().version == first


def test_a_service_without_a_model_gets_one_when_a_version_is_activated(tmp_path: Path, model_dir: Path) -> None:
    root = tmp_path / "registry"
    root.mkdir()
    service = PredictionService.from_model_dir(root, recorder=Recorder(tmp_path / "spool"))
    assert service.predictor is None and service.model_error and "train" in service.model_error
    watcher = ModelWatcher(service, root)
    assert watcher.check() is False

    version = copy_into_registry(root, model_dir)
    registry.write_active(root, version)

    assert watcher.check() is True
    assert service.require_predictor().version == version
    assert service.model_error is None


def test_activate_switches_this_process_at_once(model_registry: Path, service: PredictionService) -> None:
    first, second = versions(model_registry)
    loader = CountingLoader()
    watcher = ModelWatcher(service, model_registry, load=loader)

    previous, predictor = watcher.activate(second)

    assert (previous, predictor.version) == (first, second)
    assert service.require_predictor() is predictor
    assert registry.read_active(model_registry) == second
    assert watcher.check() is False, "the pointer this process wrote is not loaded twice"
    assert loader.loaded == [second]


def test_an_activation_by_another_process_right_after_this_ones_is_followed(
    model_registry: Path, service: PredictionService, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = versions(model_registry)
    watcher = ModelWatcher(service, model_registry)
    assert watcher.check() is False
    real_write = registry.write_active

    def then_another_process(root: Path, version: str) -> None:
        real_write(root, version)  # this worker's activation
        real_write(root, first)  # the CLI or another worker activates first, before this one looks again

    monkeypatch.setattr(registry, "write_active", then_another_process)
    watcher.activate(second)
    monkeypatch.setattr(registry, "write_active", real_write)
    assert registry.read_active(model_registry) == first
    assert service.require_predictor().version == second

    assert watcher.check() is True
    assert service.require_predictor().version == first, "this worker serves what ACTIVE names"


def test_the_thread_follows_the_pointer_within_its_interval(model_registry: Path, service: PredictionService) -> None:
    _, second = versions(model_registry)
    watcher = ModelWatcher(service, model_registry, interval=0.05)
    watcher.start()
    try:
        assert watcher.running
        registry.write_active(model_registry, second)
        deadline = time.monotonic() + 10
        while service.require_predictor().version != second and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        watcher.stop()
    assert service.require_predictor().version == second
    assert not watcher.running


def test_an_interval_of_zero_starts_no_thread(model_registry: Path, service: PredictionService) -> None:
    watcher = ModelWatcher(service, model_registry, interval=0)
    watcher.start()
    assert not watcher.running
