"""API views: parse the body, validate with the schema, predict, answer."""

from __future__ import annotations

import json
from typing import Any

from flask import Response, current_app, jsonify, request

from titanic_web import csvio, get_service
from titanic_web.api import bp
from titanic_web.errors import ApiError
from titanic_web.extensions import db
from titanic_web.models import check_tables
from titanic_web.schema import validate_passengers
from titanic_web.service import ModelUnavailable

JSON_TYPES = ("application/json",)
CSV_TYPES = ("text/csv", "application/csv")


def _json_passengers(max_rows: int) -> list[Any]:
    data = request.get_data(cache=False)  # raises 413 past MAX_CONTENT_LENGTH
    try:
        body = json.loads(data)
    except UnicodeDecodeError:
        raise ApiError(400, "malformed JSON: the body must be UTF-8 text") from None
    except ValueError as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None
    if isinstance(body, dict):
        body = [body]
    elif not isinstance(body, list):
        raise ApiError(400, "the body must be one passenger (a JSON object) or an array of them")
    if not body:
        raise ApiError(400, "the array is empty: send at least one passenger")
    if len(body) > max_rows:
        raise ApiError(413, f"{len(body)} passengers in one request; the limit is {max_rows} (MAX_ROWS)")
    return validate_passengers(body)


def _csv_passengers(max_rows: int) -> list[Any]:
    data = request.get_data(cache=False)
    try:
        return csvio.read_passengers(csvio.decode(data), max_rows=max_rows)
    except csvio.CsvError as exc:
        raise ApiError(413 if exc.too_large else 400, str(exc)) from None


@bp.post("/predict")
def predict() -> Any:
    """Predict one passenger, an array of them, or a CSV file of them."""
    max_rows = current_app.config["MAX_ROWS"]
    if request.mimetype in JSON_TYPES or request.mimetype.endswith("+json"):
        passengers = _json_passengers(max_rows)
    elif request.mimetype in CSV_TYPES:
        passengers = _csv_passengers(max_rows)
    else:
        raise ApiError(
            415,
            f"unsupported Content-Type {request.mimetype or '(none)'!r}: "
            "send application/json (a passenger or an array) or text/csv (competition layout)",
        )
    try:
        version, answers = get_service(current_app).predict(passengers, source="api")
    except ModelUnavailable as exc:
        raise ApiError(503, str(exc)) from None

    if request.accept_mimetypes.best_match(["application/json", "text/csv"]) == "text/csv":
        body = csvio.submission((a.passenger_id, a.survived) for a in answers)
        return Response(body, mimetype="text/csv", headers={"X-Model-Version": version})
    return jsonify({"model_version": version, "predictions": [a.as_dict() for a in answers]})


@bp.get("/health")
def health() -> Any:
    """Liveness: the process answers."""
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready() -> Any:
    """Readiness: a model is loaded (else 503); the database and the recorder's backlog.

    A database that is down degrades the service but does not stop it:
    predictions are still answered and kept in the spool, so this answers 200
    with status "degraded" and the backlog, and a load balancer keeps routing here.
    """
    service = get_service(current_app)
    model: dict[str, Any] = {"loaded": service.predictor is not None}
    if service.predictor is not None:
        model["version"] = service.predictor.version
    else:
        model["error"] = service.model_error
    recorder = service.recorder.status()
    database: dict[str, Any] = {"status": "ok"}
    try:
        check_tables()
    except Exception as exc:  # any driver error means "degraded", never a 500
        current_app.logger.warning("readiness: database check failed: %s", exc)
        db.session.rollback()
        database = {"status": "degraded", "error": type(exc).__name__}
    if database["status"] == "ok" and recorder["database"] == "degraded":
        database = {"status": "degraded", "error": recorder["last_error"]}
    if not model["loaded"]:
        status, code = "not ready", 503
    elif database["status"] != "ok":
        status, code = "degraded", 200
    else:
        status, code = "ready", 200
    backlog = {
        "rows": recorder["backlog_rows"],
        "oldest_age_seconds": recorder["oldest_age_seconds"],
        "rows_written": recorder["rows_written"],
        "writer_running": recorder["writer_running"],
    }
    return jsonify({"status": status, "model": model, "database": database, "backlog": backlog}), code


@bp.get("/model")
def model_card() -> Any:
    """The loaded model's card: version, data, metrics, features."""
    service = get_service(current_app)
    try:
        predictor = service.require_predictor()
    except ModelUnavailable as exc:
        raise ApiError(503, str(exc)) from None
    return jsonify(predictor.card)
