"""The model registry on disk: registering, the active pointer, activation and what gets loaded."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import copy_into_registry
from titanic_web import registry
from titanic_web.predictor import ModelError
from titanic_web.training import ARTIFACT_NAME, CARD_NAME


def version_of(model: Path) -> str:
    return str(json.loads((model / CARD_NAME).read_text())["version"])


def tamper(folder: Path) -> None:
    """Change one byte of the artifact, as an attacker or a bad disk would."""
    artifact = folder / ARTIFACT_NAME
    blob = bytearray(artifact.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    artifact.write_bytes(bytes(blob))


#: Pickles that load nowhere: a module that is not installed, a class its module no longer has.
MISSING_MODULE = b"cno_such_module_for_titanic\nPipeline\n(tR."
MISSING_CLASS = b"ctitanic_web.features\nNoSuchTransformer\n(tR."


def make_unloadable(folder: Path, blob: bytes = MISSING_MODULE) -> None:
    """Replace the artifact with one its card vouches for (sha256 updated) that fails to unpickle,
    as an artifact written with another numpy or a module since removed would."""
    (folder / ARTIFACT_NAME).write_bytes(blob)
    card = json.loads((folder / CARD_NAME).read_text())
    card["artifact_sha256"] = hashlib.sha256(blob).hexdigest()
    (folder / CARD_NAME).write_text(json.dumps(card))


def test_register_moves_a_trained_folder_under_its_version(tmp_path: Path, model_dir: Path) -> None:
    root = tmp_path / "registry"
    trained = tmp_path / "trained"
    shutil.copytree(model_dir, trained)

    info, new = registry.register(root, trained)

    assert new is True
    assert info.version == version_of(model_dir)
    assert (root / info.version / ARTIFACT_NAME).read_bytes() == (model_dir / ARTIFACT_NAME).read_bytes()
    assert not trained.exists()
    assert registry.read_active(root) is None, "registering alone activates nothing"


def test_registering_a_version_again_keeps_the_first(tmp_path: Path, model_dir: Path) -> None:
    root = tmp_path / "registry"
    shutil.copytree(model_dir, tmp_path / "a")
    shutil.copytree(model_dir, tmp_path / "b")
    registry.register(root, tmp_path / "a")

    info, new = registry.register(root, tmp_path / "b")

    assert new is False
    assert not (tmp_path / "b").exists()
    assert [v.version for v in registry.versions(root)] == [info.version]


def test_a_training_that_loses_the_race_to_register_its_version_ends_cleanly(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `flask train` of the same data: the other one renames its folder into place first."""
    root = tmp_path / "registry"
    shutil.copytree(model_dir, tmp_path / "a")
    shutil.copytree(model_dir, tmp_path / "b")
    real_replace = os.replace

    def other_training_first(src: Path, dst: Path) -> None:
        monkeypatch.setattr(registry.os, "replace", real_replace)
        registry.register(root, tmp_path / "a")  # between this one's look for the version and its rename
        real_replace(src, dst)

    monkeypatch.setattr(registry.os, "replace", other_training_first)

    info, new = registry.register(root, tmp_path / "b")

    assert new is False
    assert info.version == version_of(model_dir)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert [v.version for v in registry.versions(root)] == [info.version]


def test_register_over_a_version_folder_without_its_card_says_to_remove_it(tmp_path: Path, model_dir: Path) -> None:
    root = tmp_path / "registry"
    half = root / version_of(model_dir)
    half.mkdir(parents=True)
    shutil.copy(model_dir / ARTIFACT_NAME, half)  # a copy stopped before the card
    trained = Path(shutil.copytree(model_dir, tmp_path / "trained"))

    with pytest.raises(registry.RegistryError) as raised:
        registry.register(root, trained)

    assert str(raised.value) == (
        f"{half} exists without its model card (model.json): a version half copied or damaged; "
        f"remove it (`rm -r {half}`) and train again"
    )
    assert [p.name for p in half.iterdir()] == [ARTIFACT_NAME], "the folder is left as it was"
    shutil.rmtree(half)
    assert registry.register(root, trained) == (registry.versions(root)[0], True), "what the message says works"


def test_register_refuses_a_single_model_folder_as_registry(tmp_path: Path, model_dir: Path) -> None:
    shutil.copytree(model_dir, tmp_path / "trained")

    with pytest.raises(registry.RegistryError, match="single model"):
        registry.register(model_dir, tmp_path / "trained")


def test_write_active_replaces_the_pointer_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    registry.write_active(tmp_path, "abc123")
    registry.write_active(tmp_path, "def456")

    assert registry.read_active(tmp_path) == "def456"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ACTIVE"]


def test_activate_points_at_the_version_and_returns_it_loaded(model_registry: Path, second_model_dir: Path) -> None:
    second = version_of(second_model_dir)

    predictor = registry.activate(model_registry, second)

    assert predictor.version == second
    assert registry.read_active(model_registry) == second
    assert registry.model_path(model_registry) == model_registry / second


@pytest.mark.parametrize("name", ["nope", "../registry", ".hidden", "a/b", ""])
def test_activate_an_unknown_version_names_the_registered_ones(model_registry: Path, name: str) -> None:
    before = registry.read_active(model_registry)

    with pytest.raises(registry.UnknownVersion) as raised:
        registry.activate(model_registry, name)

    message = str(raised.value)
    assert repr(name) in message
    if name == "nope":  # a well-formed name: the message lists what exists
        for info in registry.versions(model_registry):
            assert info.version in message
    assert registry.read_active(model_registry) == before


@pytest.mark.parametrize(
    ("damage", "why"),
    [(tamper, "does not match its card"), (make_unloadable, "cannot be activated.*cannot be loaded here")],
    ids=["tampered", "fails-to-unpickle"],
)
def test_activate_refuses_a_version_that_cannot_be_loaded_and_keeps_the_pointer(
    model_registry: Path, second_model_dir: Path, damage: Callable[[Path], None], why: str
) -> None:
    second = version_of(second_model_dir)
    before = registry.read_active(model_registry)
    damage(model_registry / second)

    with pytest.raises(registry.RegistryError, match=why):
        registry.activate(model_registry, second)

    assert registry.read_active(model_registry) == before


def test_model_path_of_a_single_model_folder_is_the_folder(model_dir: Path) -> None:
    assert registry.model_path(model_dir) == model_dir


def test_model_path_of_an_empty_folder_says_to_train(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="flask --app titanic_web train"):
        registry.model_path(tmp_path)


def test_model_path_without_an_active_version_says_to_activate(tmp_path: Path, model_dir: Path) -> None:
    version = copy_into_registry(tmp_path, model_dir)

    with pytest.raises(ModelError, match="model activate") as raised:
        registry.model_path(tmp_path)
    assert version in str(raised.value)


def test_model_path_of_a_pointer_to_a_missing_version_is_an_error(tmp_path: Path, model_dir: Path) -> None:
    copy_into_registry(tmp_path, model_dir)
    registry.write_active(tmp_path, "0123456789ab")

    with pytest.raises(ModelError, match="0123456789ab"):
        registry.model_path(tmp_path)


def test_versions_are_oldest_first_and_skip_unfinished_folders(model_registry: Path) -> None:
    (model_registry / ".training-1-abc").mkdir()  # a training run in progress
    (model_registry / "empty").mkdir()  # no card: not a version

    found = registry.versions(model_registry)

    assert len(found) == 2
    assert [v.trained_at for v in found] == sorted(v.trained_at or "" for v in found)
    assert all(v.cv_accuracy is not None and 0.5 < v.cv_accuracy <= 1 for v in found)


def test_staging_folders_are_inside_the_registry_and_not_versions(tmp_path: Path) -> None:
    staging = registry.staging_dir(tmp_path / "registry")

    assert staging.parent == tmp_path / "registry"
    assert staging.name.startswith(".")
    assert registry.versions(tmp_path / "registry") == []


def test_a_pointer_that_cannot_be_written_is_a_clear_error(
    model_registry: Path, second_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = registry.read_active(model_registry)

    def refuse(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(registry.os, "replace", refuse)  # a read-only image: root may not test by chmod

    with pytest.raises(registry.ReadOnlyRegistry, match="cannot write .*ACTIVE: Permission denied"):
        registry.activate(model_registry, version_of(second_model_dir))
    assert registry.read_active(model_registry) == before
    assert not [p for p in model_registry.iterdir() if p.name.endswith(".tmp")]
