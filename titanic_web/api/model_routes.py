"""API views of the model's life: the versions and their outcomes, activation, reported outcomes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import current_app, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from titanic_web import get_model_watcher, outcomes, registry
from titanic_web.api import bp
from titanic_web.api.encoding import check_encoding
from titanic_web.auth import require_admin
from titanic_web.errors import ApiError
from titanic_web.extensions import db
from titanic_web.schema import FieldError, InputError


def describe_model(card: dict[str, Any]) -> dict[str, Any]:
    """The served model's card, its accuracy on recorded outcomes, and every version beside it.

    ``versions`` lists the registry's versions (oldest first) and any other version
    that has outcomes recorded; ``active`` marks the one the registry's pointer names.
    """
    root = Path(current_app.config["MODEL_DIR"])
    try:
        by_version: dict[str, dict[str, Any]] | None = outcomes.accuracy_by_version(db.session)
        error = None
    except SQLAlchemyError as exc:  # the card is still worth answering without the database
        db.session.rollback()
        current_app.logger.warning("outcome accuracy unavailable: %s", exc)
        by_version, error = None, f"the database could not be read ({type(exc).__name__})"
    if registry.is_single_model(root):
        found = [registry.VersionInfo(str(card["version"]), root, card)]
        active: str | None = str(card["version"])
    else:
        found = registry.versions(root)
        try:
            active = registry.read_active(root)
        except registry.RegistryError:
            active = None
    none = outcomes.summary(0, 0)

    def figures(version: str) -> dict[str, Any] | None:
        return None if by_version is None else by_version.get(version, none)

    versions = [
        {
            "version": info.version,
            "trained_at": info.trained_at,
            "cv_accuracy": info.cv_accuracy,
            "outcomes": figures(info.version),
            "active": info.version == active,
            "registered": True,
        }
        for info in found
    ]
    listed = {info.version for info in found}
    versions += [
        {
            "version": version,
            "trained_at": None,
            "cv_accuracy": None,
            "outcomes": figures(version),
            "active": False,
            "registered": False,  # it served and was judged, and its folder is gone
        }
        for version in sorted(set(by_version or ()) - listed)
    ]
    body = {**card, "outcomes": figures(str(card["version"])), "versions": versions}
    if error is not None:
        body["outcomes_error"] = error
    return body


def _json_body() -> Any:
    """The request's JSON body.

    :raise ApiError: 415 for another content type, 400 for malformed JSON.
    """
    if not (request.mimetype == "application/json" or request.mimetype.endswith("+json")):
        raise ApiError(415, f"unsupported Content-Type {request.mimetype or '(none)'!r}: send application/json")
    check_encoding(request)
    body = request.get_json(silent=True)
    if body is None:
        raise ApiError(400, "the body is not valid JSON")
    return body


@bp.post("/model/activate")
@require_admin  # an admin action: always needs an admin key (ADMIN_API_KEYS), checked before anything is read
def activate_model() -> Any:
    """Make a registered version the active one: this worker serves it at once, the others within a second."""
    body = _json_body()
    if not isinstance(body, dict):
        raise ApiError(400, 'send a JSON object: {"version": "<a registered version>"}')
    errors = [
        FieldError(None, str(name), f"unknown field {str(name)!r}; the only field is version")
        for name in body
        if name != "version"
    ]
    version = body.get("version")
    if "version" not in body:
        errors.append(FieldError(None, "version", "is required (see GET /api/model for the versions)"))
    elif not isinstance(version, str) or not version:
        errors.append(FieldError(None, "version", f"must be a version name (text), got {version!r}"))
    if errors:
        raise InputError(errors)
    root = Path(current_app.config["MODEL_DIR"])
    if registry.is_single_model(root):
        raise ApiError(409, "MODEL_DIR is a single model folder, not a registry of versions: nothing to activate")
    try:
        previous, predictor = get_model_watcher(current_app).activate(str(version))
    except registry.UnknownVersion as exc:
        raise ApiError(404, str(exc)) from None
    except registry.ReadOnlyRegistry as exc:
        raise ApiError(409, f"{exc}: this server's registry is read-only; nothing changed") from None
    except registry.RegistryError as exc:
        raise ApiError(422, str(exc)) from None
    seconds = current_app.config["MODEL_CHECK_SECONDS"]
    if seconds > 0:
        others = f"every worker serves it within about {seconds:g} s"
    else:  # no watcher: the other workers read ACTIVE only when they start
        others = (
            "this worker serves it now; the other workers serve it only once restarted "
            "(MODEL_CHECK_SECONDS is 0: they do not watch the registry)"
        )
    return jsonify(
        {
            "active": predictor.version,
            "previous": previous,
            "message": f"version {predictor.version} is active; {others}",
        }
    )


@bp.post("/outcomes")
def record_outcomes() -> Any:
    """Record what really happened to predicted passengers: ``[{"id": "<uuid>", "survived": 0 or 1}]``."""
    body = _json_body()
    limit = current_app.config["MAX_ROWS"]
    if isinstance(body, list) and len(body) > limit:
        raise ApiError(413, f"{len(body)} outcomes in one request; at most {limit} (MAX_ROWS)")
    try:
        parsed = outcomes.parse(body)
    except outcomes.OutcomeBodyError as exc:
        raise ApiError(400, str(exc)) from None
    try:
        result = outcomes.record(db.session, parsed)
    except outcomes.OutcomeConflict as exc:
        count = len(exc.errors)
        raise ApiError(
            409,
            f"{count} outcome{'s' if count != 1 else ''} contradict{'s' if count == 1 else ''} the one already "
            "recorded; nothing was stored",
            errors=[e.as_dict() for e in exc.errors],
            error_count=count,
        ) from None
    except SQLAlchemyError as exc:
        db.session.rollback()
        current_app.logger.warning("outcomes not recorded: %s", exc)
        raise ApiError(503, "the database is unavailable; nothing was stored: send the outcomes again later") from None
    fresh = {o.id for o in result.recorded}
    return jsonify(
        {
            "recorded": len(result.recorded),
            "unchanged": len(result.unchanged),
            "outcomes": [
                {"id": str(o.id), "survived": o.survived, "status": "recorded" if o.id in fresh else "unchanged"}
                for o in sorted([*result.recorded, *result.unchanged], key=lambda o: o.index)
            ],
        }
    )
