"""Model versions through the app: train registers, `model list|show|activate`, the activation
API, live switching in a running app, and GET /api/model listing the versions."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import PASSENGER, TEST_CSV, TRAIN_CSV, flush
from tests.integration.conftest import ADMIN, ADMIN_KEY
from tests.unit.test_registry import make_unloadable, tamper
from titanic_web import get_model_watcher, get_service, registry
from titanic_web.extensions import db
from titanic_web.models import PredictionRow
from titanic_web.predictor import Predictor


def invoke(app: Flask, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=list(args))


def versions(root: Path) -> tuple[str, str]:
    """(active, other) of a two-version registry."""
    active = registry.read_active(root)
    (other,) = [v.version for v in registry.versions(root) if v.version != active]
    assert active is not None
    return active, other


def predict_version(client: FlaskClient) -> tuple[str, str]:
    """(model_version, prediction id) of one API prediction."""
    response = client.post("/api/predict", json=PASSENGER)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert response.headers["X-Model-Version"] == body["model_version"]
    return body["model_version"], body["predictions"][0]["id"]


def subset(tmp_path: Path, rows: int) -> Path:
    """The first `rows` passengers of train.csv as a file of their own."""
    path = tmp_path / f"train-{rows}.csv"
    path.write_text("".join(TRAIN_CSV.read_text().splitlines(keepends=True)[: rows + 1]))
    return path


# -- train registers ------------------------------------------------------------------------------


def test_train_registers_a_new_version_and_activates_it(
    registry_app: Flask, model_registry: Path, tmp_path: Path, cheap_training: None
) -> None:
    before = {v.version for v in registry.versions(model_registry)}

    result = invoke(registry_app, "train", "--data", str(subset(tmp_path, 300)))

    assert result.exit_code == 0, result.output
    (new,) = {v.version for v in registry.versions(model_registry)} - before
    assert registry.read_active(model_registry) == new
    assert f"registered version {new}: {model_registry / new}" in result.output
    assert ".training-" not in result.output, "a staging path, gone once the version is registered"
    assert f"version {new} is active" in result.output and "switch to it within about 1 second" in result.output
    assert sorted(p.name for p in (model_registry / new).iterdir()) == ["model.joblib", "model.json"]
    assert not [p for p in model_registry.iterdir() if p.name.startswith(".")], "no staging folder left"
    card = json.loads((model_registry / new / "model.json").read_text())
    assert card["training_data"]["sources"] == [
        {"file": "train-300.csv", "sha256": card["training_data"]["sha256"], "rows": 300}
    ]


def test_train_no_activate_registers_and_leaves_the_active_version(
    registry_app: Flask, model_registry: Path, tmp_path: Path, cheap_training: None
) -> None:
    active, _ = versions(model_registry)

    result = invoke(registry_app, "train", "--data", str(subset(tmp_path, 300)), "--no-activate")

    assert result.exit_code == 0, result.output
    assert registry.read_active(model_registry) == active
    assert len(registry.versions(model_registry)) == 3
    assert "not activated (--no-activate)" in result.output and "model activate" in result.output


def test_train_into_another_registry_says_how_to_activate_there(
    registry_app: Flask, tmp_path: Path, cheap_training: None
) -> None:
    """`model activate` looks in MODEL_DIR: the hint after `--out DIR --no-activate` names DIR."""
    other = tmp_path / "other-registry"

    result = invoke(registry_app, "train", "--data", str(subset(tmp_path, 300)), "--out", str(other), "--no-activate")

    assert result.exit_code == 0, result.output
    (version,) = [v.version for v in registry.versions(other)]
    assert f"`MODEL_DIR={other} flask --app titanic_web model activate {version}` does it" in result.output


def test_training_the_same_data_again_gives_the_same_registered_version(
    registry_app: Flask, model_registry: Path, tmp_path: Path, cheap_training: None
) -> None:
    data = subset(tmp_path, 300)
    assert invoke(registry_app, "train", "--data", str(data), "--no-activate").exit_code == 0

    result = invoke(registry_app, "train", "--data", str(data), "--no-activate")

    assert result.exit_code == 0, result.output
    assert "already registered" in result.output
    assert len(registry.versions(model_registry)) == 3


def test_train_over_a_version_folder_without_its_card_says_what_to_do(
    registry_app: Flask, model_registry: Path, tmp_path: Path, cheap_training: None
) -> None:
    data = subset(tmp_path, 300)
    before = {v.version for v in registry.versions(model_registry)}
    assert invoke(registry_app, "train", "--data", str(data), "--no-activate").exit_code == 0
    (new,) = {v.version for v in registry.versions(model_registry)} - before
    (model_registry / new / "model.json").unlink()  # as a copy of the version stopped before its card

    result = invoke(registry_app, "train", "--data", str(data), "--no-activate")

    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # a clear error, no traceback
    assert f"{model_registry / new} exists without its model card (model.json)" in result.output
    assert f"remove it (`rm -r {model_registry / new}`) and train again" in result.output
    assert not [p for p in model_registry.iterdir() if p.name.startswith(".")], "no staging folder left"


def test_train_into_a_single_model_folder_is_refused(registry_app: Flask, model_dir: Path) -> None:
    result = invoke(registry_app, "train", "--out", str(model_dir))

    assert result.exit_code != 0
    assert "single model" in result.output and "Traceback" not in result.output


def test_an_app_without_a_model_serves_the_first_trained_one_without_restart(
    make_app: Any, tmp_path: Path, cheap_training: None
) -> None:
    root = tmp_path / "empty-registry"
    app = make_app(MODEL_DIR=root)
    client = app.test_client()
    assert "train" in client.post("/api/predict", json=PASSENGER).get_json()["message"]

    assert invoke(app, "train", "--data", str(subset(tmp_path, 300))).exit_code == 0
    assert get_model_watcher(app).check() is True

    assert predict_version(client)[0] == registry.read_active(root)


# -- model list | show | activate -----------------------------------------------------------------


def test_model_list_shows_every_version_and_marks_the_active_one(registry_app: Flask, model_registry: Path) -> None:
    active, other = versions(model_registry)

    result = invoke(registry_app, "model", "list")

    assert result.exit_code == 0, result.output
    lines = {line.split()[1] if line.startswith("*") else line.split()[0]: line for line in result.output.splitlines()}
    assert lines[active].startswith("* ") and not lines[other].startswith("*")
    for info in registry.versions(model_registry):
        assert info.trained_at in lines[info.version]
        assert f"{info.cv_accuracy:.4f}" in lines[info.version]


def test_model_show_prints_the_card(registry_app: Flask, model_registry: Path) -> None:
    active, other = versions(model_registry)

    shown = invoke(registry_app, "model", "show", other)
    shown_active = invoke(registry_app, "model", "show")

    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output) == json.loads((model_registry / other / "model.json").read_text())
    assert json.loads(shown_active.output)["version"] == active


def test_model_show_an_unknown_version_lists_the_registered(registry_app: Flask, model_registry: Path) -> None:
    result = invoke(registry_app, "model", "show", "0123456789ab")

    assert result.exit_code != 0
    assert "no model version '0123456789ab'" in result.output
    assert all(v in result.output for v in versions(model_registry))


def test_activate_and_roll_back_switch_the_running_app(registry_app: Flask, model_registry: Path) -> None:
    first, second = versions(model_registry)
    client = registry_app.test_client()
    watcher = get_model_watcher(registry_app)
    assert predict_version(client)[0] == first

    forward = invoke(registry_app, "model", "activate", second)
    assert forward.exit_code == 0, forward.output
    assert f"version {second} is active (was {first})" in forward.output
    assert watcher.check() is True  # what the worker's thread does within a second
    on_second = predict_version(client)

    back = invoke(registry_app, "model", "activate", first)
    assert back.exit_code == 0, back.output
    assert watcher.check() is True
    on_first = predict_version(client)

    assert (on_second[0], on_first[0]) == (second, first)
    flush(registry_app)
    with registry_app.app_context():
        stored = {str(r.id): r.model_version for r in db.session.scalars(db.select(PredictionRow))}
    assert stored[on_second[1]] == second and stored[on_first[1]] == first


def test_activate_an_unknown_version_is_a_clear_error(registry_app: Flask, model_registry: Path) -> None:
    active, other = versions(model_registry)

    result = invoke(registry_app, "model", "activate", "nope")

    assert result.exit_code != 0
    assert "no model version 'nope'" in result.output and active in result.output and other in result.output
    assert "Traceback" not in result.output
    assert registry.read_active(model_registry) == active


def test_activate_a_tampered_version_is_refused(registry_app: Flask, model_registry: Path) -> None:
    active, other = versions(model_registry)
    tamper(model_registry / other)

    result = invoke(registry_app, "model", "activate", other)

    assert result.exit_code != 0
    assert "cannot be activated" in result.output and "does not match its card" in result.output
    assert registry.read_active(model_registry) == active


def test_activate_a_version_that_fails_to_unpickle_is_refused(registry_app: Flask, model_registry: Path) -> None:
    active, other = versions(model_registry)
    make_unloadable(model_registry / other)

    result = invoke(registry_app, "model", "activate", other)

    assert result.exit_code != 0
    assert f"model version {other} cannot be activated" in result.output
    assert "cannot be loaded here (ModuleNotFoundError" in result.output and "retrain" in result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # a clear error, no traceback
    assert registry.read_active(model_registry) == active


def test_an_active_version_that_fails_to_unpickle_starts_the_app_without_a_model(
    make_app: Any, model_registry: Path
) -> None:
    active, _ = versions(model_registry)
    make_unloadable(model_registry / active)

    client = make_app(MODEL_DIR=model_registry).test_client()  # no exception: the workers start

    predicted = client.post("/api/predict", json=PASSENGER)
    assert predicted.status_code == 503
    assert "cannot be loaded here" in predicted.get_json()["message"]
    ready = client.get("/api/ready")
    assert ready.status_code == 503
    assert ready.get_json()["model"]["loaded"] is False
    assert "cannot be loaded here (ModuleNotFoundError" in ready.get_json()["model"]["error"]


def test_a_tampered_version_written_to_the_pointer_is_refused_and_the_old_one_serves(
    registry_app: Flask, model_registry: Path, caplog: pytest.LogCaptureFixture
) -> None:
    active, other = versions(model_registry)
    tamper(model_registry / other)
    registry.write_active(model_registry, other)  # past the checked `activate`, as a hand edit would

    with caplog.at_level(logging.ERROR, logger="titanic_web.watcher"):
        assert get_model_watcher(registry_app).check() is False

    assert predict_version(registry_app.test_client())[0] == active
    assert f"model version {other} refused" in caplog.text


def test_model_commands_on_a_single_model_folder_say_it_is_no_registry(app: Flask) -> None:
    result = invoke(app, "model", "list")

    assert result.exit_code != 0
    assert "single model folder" in result.output


def test_predict_uses_the_active_version_or_the_one_named(
    registry_app: Flask, model_registry: Path, tmp_path: Path
) -> None:
    active, other = versions(model_registry)
    outputs = {}
    for version in (None, other):
        out = tmp_path / f"{version}.csv"
        args = ["predict", str(TEST_CSV), "-o", str(out)] + ([] if version is None else ["--version", version])
        result = invoke(registry_app, *args)
        assert result.exit_code == 0, result.output
        assert f"(model {version or active})" in result.output
        outputs[version] = [line.split(",")[1] for line in out.read_text().splitlines()[1:]]

    from tests.integration.helpers import kaggle_rows

    passengers = kaggle_rows(TEST_CSV)
    expected_other = [str(p.survived) for p in Predictor.from_dir(model_registry / other).predict(passengers)]
    assert outputs[other] == expected_other
    assert outputs[None] != outputs[other], "two models trained on different data disagree somewhere"


# -- the activation API ---------------------------------------------------------------------------


def test_activation_api_switches_this_worker_at_once(registry_app: Flask, model_registry: Path) -> None:
    first, second = versions(model_registry)
    client = registry_app.test_client()

    response = client.post("/api/model/activate", headers=ADMIN, json={"version": second})

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert (body["active"], body["previous"]) == (second, first)
    assert predict_version(client)[0] == second  # no watcher tick needed in the worker that answered
    assert registry.read_active(model_registry) == second
    assert client.post("/api/model/activate", headers=ADMIN, json={"version": first}).status_code == 200
    assert predict_version(client)[0] == first


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"version": "0123456789ab"}, 404, "no model version '0123456789ab'"),
        ({"version": "../etc"}, 404, "not a model version name"),
        ({}, 422, "version"),
        ({"version": 5}, 422, "must be a version name"),
        ({"version": "x", "force": True}, 422, "unknown field 'force'"),
        (["x"], 400, "JSON object"),
    ],
)
def test_activation_api_refuses_bad_requests(
    registry_app: Flask, model_registry: Path, body: Any, status: int, message: str
) -> None:
    active, _ = versions(model_registry)

    response = registry_app.test_client().post("/api/model/activate", headers=ADMIN, json=body)

    assert response.status_code == status, response.get_json()
    answer = response.get_json()
    assert answer["code"] == status
    assert message in json.dumps(answer)
    assert registry.read_active(model_registry) == active


def test_activation_api_refuses_a_tampered_version(registry_app: Flask, model_registry: Path) -> None:
    active, other = versions(model_registry)
    tamper(model_registry / other)

    response = registry_app.test_client().post("/api/model/activate", headers=ADMIN, json={"version": other})

    assert response.status_code == 422
    assert "does not match its card" in response.get_json()["message"]
    assert registry.read_active(model_registry) == active
    assert get_service(registry_app).require_predictor().version == active


def test_activation_api_refuses_a_version_that_fails_to_unpickle(registry_app: Flask, model_registry: Path) -> None:
    active, other = versions(model_registry)
    make_unloadable(model_registry / other)

    response = registry_app.test_client().post("/api/model/activate", headers=ADMIN, json={"version": other})

    assert response.status_code == 422, response.get_json()
    assert "cannot be loaded here (ModuleNotFoundError" in response.get_json()["message"]
    assert registry.read_active(model_registry) == active
    assert get_service(registry_app).require_predictor().version == active


@pytest.mark.parametrize(
    ("seconds", "api_says", "cli_says"),
    [
        (1.0, "every worker serves it within about 1 s", "running servers switch to it within about 1 second"),
        (
            0,
            "this worker serves it now; the other workers serve it only once restarted "
            "(MODEL_CHECK_SECONDS is 0: they do not watch the registry)",
            "running servers serve it only once restarted (MODEL_CHECK_SECONDS is 0: they do not watch the registry)",
        ),
    ],
    ids=["watching", "not-watching"],
)
def test_activation_says_when_the_other_workers_switch(
    make_app: Any, model_registry: Path, seconds: float, api_says: str, cli_says: str
) -> None:
    first, second = versions(model_registry)
    app = make_app(MODEL_DIR=model_registry, MODEL_CHECK_SECONDS=seconds, ADMIN_API_KEYS=(ADMIN_KEY,))

    response = app.test_client().post("/api/model/activate", headers=ADMIN, json={"version": second})
    result = invoke(app, "model", "activate", first)

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["message"] == f"version {second} is active; {api_says}"
    assert result.exit_code == 0, result.output
    assert f"version {first} is active (was {second}): {cli_says}" in result.output


def test_activation_api_on_a_read_only_registry_changes_nothing(
    registry_app: Flask, model_registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    active, other = versions(model_registry)

    def refuse(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(registry.os, "replace", refuse)

    response = registry_app.test_client().post("/api/model/activate", headers=ADMIN, json={"version": other})

    assert response.status_code == 409
    assert "read-only" in response.get_json()["message"]
    assert get_service(registry_app).require_predictor().version == active


def test_activation_api_wants_json(registry_app: Flask) -> None:
    client = registry_app.test_client()

    assert client.post("/api/model/activate", headers=ADMIN, data="version=x").status_code == 415
    malformed = client.post("/api/model/activate", headers=ADMIN, data="{", content_type="application/json")
    assert malformed.status_code == 400 and malformed.get_json()["code"] == 400


def test_activation_api_on_a_single_model_folder_is_a_conflict(make_app: Any) -> None:
    client = make_app(ADMIN_API_KEYS=(ADMIN_KEY,)).test_client()  # MODEL_DIR: model_dir, one model

    response = client.post("/api/model/activate", headers=ADMIN, json={"version": "abc"})

    assert response.status_code == 409
    assert "not a registry" in response.get_json()["message"]


# -- GET /api/model -------------------------------------------------------------------------------


def test_model_card_lists_every_version_and_marks_the_active(registry_app: Flask, model_registry: Path) -> None:
    active, other = versions(model_registry)
    client = registry_app.test_client()

    body = client.get("/api/model").get_json()

    card = json.loads((model_registry / active / "model.json").read_text())
    assert {name: body[name] for name in card} == card
    assert body["outcomes"] == {"count": 0, "correct": 0, "accuracy": None}
    listed = {v["version"]: v for v in body["versions"]}
    assert set(listed) == {active, other}
    for info in registry.versions(model_registry):
        entry = listed[info.version]
        assert entry["trained_at"] == info.trained_at and entry["cv_accuracy"] == info.cv_accuracy
        assert entry["active"] is (info.version == active)
        assert entry["registered"] is True

    client.post("/api/model/activate", headers=ADMIN, json={"version": other})
    after = client.get("/api/model").get_json()
    assert after["version"] == other
    assert [v["version"] for v in after["versions"] if v["active"]] == [other]


def test_model_card_of_a_version_no_longer_registered_still_lists_its_outcomes(
    make_app: Any, model_registry: Path
) -> None:
    """Predictions by a version whose folder was removed keep their outcomes in the list."""
    from tests.integration.test_outcomes import post_outcomes

    first, second = versions(model_registry)
    app = make_app(MODEL_DIR=model_registry, ADMIN_API_KEYS=(ADMIN_KEY,))
    client = app.test_client()
    client.post("/api/model/activate", headers=ADMIN, json={"version": second})
    _, prediction_id = predict_version(client)
    client.post("/api/model/activate", headers=ADMIN, json={"version": first})
    flush(app)
    assert post_outcomes(client, [{"id": prediction_id, "survived": 1}]).status_code == 200
    shutil.rmtree(model_registry / second)

    listed = {v["version"]: v for v in client.get("/api/model").get_json()["versions"]}

    assert listed[second]["registered"] is False and listed[second]["outcomes"]["count"] == 1


def test_activating_over_http_needs_an_admin_key_and_changes_nothing_without_one(registry_app: Flask) -> None:
    client = registry_app.test_client()
    root = Path(registry_app.config["MODEL_DIR"])
    active = registry.read_active(root)
    other = next(v.version for v in registry.versions(root) if v.version != active)
    for headers, status in (({}, 401), ({"X-API-Key": "not-the-admin-key-0123456789"}, 401)):
        response = client.post("/api/model/activate", headers=headers, json={"version": other})
        assert response.status_code == status
        assert registry.read_active(root) == active
    assert client.post("/api/model/activate", headers=ADMIN, json={"version": other}).status_code == 200
    assert registry.read_active(root) == other


def test_a_switch_shows_in_the_model_gauge_before_any_request(registry_app: Flask, model_registry: Path) -> None:
    """Under gunicorn each worker keeps its own titanic_model_info; one that answered nothing after
    a switch kept saying the old version was answering (1), so /metrics showed both at 1."""
    from prometheus_client.parser import text_string_to_metric_families

    metrics = registry_app.extensions["metrics"]
    active, other = versions(model_registry)

    def gauge() -> dict[str, float]:
        body, _ = metrics.render(None)  # what this worker's part of a scrape holds, no request made
        (family,) = [f for f in text_string_to_metric_families(body.decode()) if f.name == "titanic_model_info"]
        return {sample.labels["version"]: sample.value for sample in family.samples}

    assert gauge() == {active: 1.0}
    registry.write_active(model_registry, other)

    assert get_model_watcher(registry_app).check() is True

    assert gauge() == {active: 0.0, other: 1.0}
