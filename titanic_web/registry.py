"""The model registry on disk: one folder per trained version, and a pointer to the active one.

    MODEL_DIR/                 (model/registry by default)
      ACTIVE                   the active version's name, replaced atomically
      9d83174feb50/            model.joblib + model.json (+ outcomes.csv when trained with outcomes)
      1f0c2a7e4b11/

A folder holding model.joblib and model.json itself (no ACTIVE, no versions) is a
single pinned model: it is served as it is and never switched. Knows nothing of Flask.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from titanic_web.predictor import ModelError, Predictor
from titanic_web.training import ARTIFACT_NAME, CARD_NAME

ACTIVE_NAME = "ACTIVE"

#: What a version folder may be called: a card's version, never a path (no "/", no leading dot).
_VERSION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


class RegistryError(Exception):
    """A registry operation cannot be done; the message says why and what to do."""


class UnknownVersion(RegistryError):
    """The registry has no version of that name."""


class ReadOnlyRegistry(RegistryError):
    """The registry's folder cannot be written here (a read-only image, another owner)."""


@dataclass(frozen=True)
class VersionInfo:
    """One registered version, as its card describes it."""

    version: str
    path: Path
    card: dict[str, Any]

    @property
    def trained_at(self) -> str | None:
        """When it was trained (ISO 8601, UTC), as the card says."""
        value = self.card.get("trained_at")
        return None if value is None else str(value)

    @property
    def cv_accuracy(self) -> float | None:
        """Mean cross-validated accuracy, as the card says."""
        value = (self.card.get("cv") or {}).get("accuracy_mean")
        return None if value is None else float(value)


def is_single_model(directory: Path) -> bool:
    """True when the folder is one model (its card beside it), not a registry."""
    return (directory / CARD_NAME).is_file() and not (directory / ACTIVE_NAME).exists()


def pointer_path(root: Path) -> Path:
    """The active pointer's file in a registry."""
    return root / ACTIVE_NAME


def read_active(root: Path) -> str | None:
    """The active version's name, or None when nothing is active yet.

    :raise RegistryError: the pointer holds something that is not a version name.
    """
    try:
        text = pointer_path(root).read_text().strip()
    except FileNotFoundError:
        return None
    if not _VERSION.match(text):
        raise RegistryError(f"{pointer_path(root)} does not name a version ({text[:40]!r})")
    return text


def write_active(root: Path, version: str) -> None:
    """Point ACTIVE at a version, atomically: a reader sees the old name or the new, never half.

    Checks nothing: :func:`activate` is the checked way.
    """
    _check_name(version)
    tmp = root / f".{ACTIVE_NAME}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as fh:
            fh.write(version + "\n")
            fh.flush()
            os.fsync(fh.fileno())  # the name survives a crash before it is seen as active
        os.replace(tmp, pointer_path(root))
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ReadOnlyRegistry(f"cannot write {pointer_path(root)}: {exc.strerror or exc}") from None


def _check_name(version: str) -> None:
    if not _VERSION.match(version):
        raise UnknownVersion(f"{version!r} is not a model version name")


def versions(root: Path) -> list[VersionInfo]:
    """Every registered version with a readable card, oldest training first."""
    found: list[VersionInfo] = []
    if not root.is_dir():
        return found
    for entry in root.iterdir():
        if not entry.is_dir() or not _VERSION.match(entry.name):
            continue  # staging folders start with a dot
        try:
            card = json.loads((entry / CARD_NAME).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(card, dict):
            found.append(VersionInfo(entry.name, entry, card))
    return sorted(found, key=lambda v: (v.trained_at or "", v.version))


def version_dir(root: Path, version: str) -> Path:
    """The folder of a registered version.

    :raise UnknownVersion: no such version (the message lists the known ones).
    """
    _check_name(version)
    path = root / version
    if not (path / CARD_NAME).is_file():
        known = ", ".join(v.version for v in versions(root)) or "none"
        raise UnknownVersion(f"no model version {version!r} in {root} (registered: {known})")
    return path


def activate(root: Path, version: str, *, load: Callable[[Path], Predictor] = Predictor.from_dir) -> Predictor:
    """Make a registered version the active one, after loading it as a server would.

    The load checks the artifact's sha256 against its card and the scikit-learn
    version before unpickling; a version that fails is refused and the pointer
    is left as it was. Returns the loaded predictor.

    :raise UnknownVersion: no such version.
    :raise RegistryError: the version cannot be loaded (the message says why).
    :raise ReadOnlyRegistry: the pointer cannot be written.
    """
    path = version_dir(root, version)
    try:
        predictor = load(path)
    except ModelError as exc:
        raise RegistryError(f"model version {version} cannot be activated: {exc}") from None
    if predictor.version != version:
        raise RegistryError(f"the card in {path} says version {predictor.version}, not {version}: refusing it")
    write_active(root, version)
    return predictor


def register(root: Path, trained_dir: Path) -> tuple[VersionInfo, bool]:
    """Move a freshly trained folder (artifact + card) into the registry under its version.

    Training is deterministic, so a version already registered has the same bytes:
    it is kept and the new folder removed, also when another training of the same data
    registered it a moment before this one's rename. Returns the version and whether it is new.

    :raise RegistryError: the folder holds no card; a different artifact under a registered
        version; a folder of that version without its card (half copied); or the registry
        cannot be written.
    """
    if is_single_model(root):
        raise RegistryError(
            f"{root} holds a single model (model.json), not a registry: point MODEL_DIR (or --out) "
            "at a registry folder such as model/registry"
        )
    try:
        card = json.loads((trained_dir / CARD_NAME).read_text())
        version = str(card["version"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RegistryError(f"{trained_dir} holds no readable model card ({exc})") from None
    _check_name(version)
    target = root / version
    if (target / CARD_NAME).is_file():
        return _keep_registered(target, card, trained_dir), False
    try:
        root.mkdir(parents=True, exist_ok=True)
        os.replace(trained_dir, target)  # one rename: the version appears complete or not at all
    except OSError as exc:
        if (target / CARD_NAME).is_file():  # another training of the same data renamed first
            return _keep_registered(target, card, trained_dir), False
        if target.exists():
            raise RegistryError(
                f"{target} exists without its model card ({CARD_NAME}): a version half copied or damaged; "
                f"remove it (`rm -r {target}`) and train again"
            ) from None
        raise RegistryError(f"cannot add version {version} to {root}: {exc.strerror or exc}") from None
    return VersionInfo(version, target, card), True


def _keep_registered(target: Path, card: dict[str, Any], trained_dir: Path) -> VersionInfo:
    """The version already in ``target``, when it holds the artifact ``card`` describes; removes ``trained_dir``.

    :raise RegistryError: another artifact, or an unreadable card, under that version.
    """
    try:
        existing = json.loads((target / CARD_NAME).read_text())
    except (OSError, ValueError) as exc:
        raise RegistryError(
            f"{target / CARD_NAME} is unreadable ({exc}): remove the version (`rm -r {target}`) and train again"
        ) from None
    if not isinstance(existing, dict) or existing.get("artifact_sha256") != card.get("artifact_sha256"):
        raise RegistryError(f"{target} holds another artifact under version {target.name}: not replacing it")
    shutil.rmtree(trained_dir)
    return VersionInfo(target.name, target, existing)


def staging_dir(root: Path) -> Path:
    """A new, empty folder inside the registry to train into (same disk: the move is a rename)."""
    path = root / f".training-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        path.mkdir()
    except OSError as exc:
        raise ReadOnlyRegistry(f"cannot create a version in {root}: {exc.strerror or exc}") from None
    return path


def model_path(model_dir: Path) -> Path:
    """The folder to load: the active version of a registry, or the folder itself if it is one model.

    :raise ModelError: nothing trained yet, no active version, or a pointer to a missing version.
    """
    if is_single_model(model_dir):
        return model_dir
    try:
        active = read_active(model_dir)
    except RegistryError as exc:
        raise ModelError(str(exc)) from None
    if active is None:
        known = versions(model_dir)
        if known:
            raise ModelError(
                f"no active model version in {model_dir}: activate one with "
                f"`flask --app titanic_web model activate VERSION` (registered: {', '.join(v.version for v in known)})"
            )
        raise ModelError(f"no trained model in {model_dir}: run `flask --app titanic_web train` to create one")
    path = model_dir / active
    if not (path / CARD_NAME).is_file() or not (path / ARTIFACT_NAME).is_file():
        raise ModelError(f"{pointer_path(model_dir)} names version {active}, which is not in the registry")
    return path


def load_predictor(model_dir: Path) -> Predictor:
    """Load the model MODEL_DIR designates (see :func:`model_path`), verified.

    :raise ModelError: no usable model.
    """
    return Predictor.from_dir(model_path(model_dir))
