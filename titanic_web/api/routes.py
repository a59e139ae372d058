"""API views: parse the body, validate with the schema, predict, answer."""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from flask import Flask, Request, Response, current_app, jsonify, request

from titanic_web import batch, get_service
from titanic_web.api import bp
from titanic_web.api.encoding import check_encoding
from titanic_web.errors import ApiError
from titanic_web.extensions import db
from titanic_web.models import check_tables
from titanic_web.predictor import ModelError
from titanic_web.service import ModelUnavailable

JSON_TYPES = ("application/json",)
CSV_TYPES = ("text/csv", "application/csv")
#: What an answer can be, JSON first (the default when both are as welcome); a CSV type with its
#: charset, as a client may ask for it, matches only when offered with it.
CSV_ANSWERS = ("text/csv", "application/csv", "text/csv; charset=utf-8", "application/csv; charset=utf-8")
ANSWER_TYPES = ["application/json", *CSV_ANSWERS]
#: The query parameters of POST /api/predict.
PREDICT_PARAMETERS = ("explain",)


#: Bodies up to this size are read into memory; larger ones go to a temporary file.
IN_MEMORY_BYTES = 1 << 20


def body_stream(req: Request) -> IO[bytes]:
    """The request body as a file: in memory when small, else copied to disk a block at a time.

    :raise RequestEntityTooLarge: the body is over MAX_CONTENT_LENGTH (413).
    """
    length = req.content_length
    if length is not None and length <= IN_MEMORY_BYTES:
        return io.BytesIO(req.get_data(cache=False))
    copy = tempfile.SpooledTemporaryFile(max_size=IN_MEMORY_BYTES)  # noqa: SIM115  (returned open to the caller)
    try:
        shutil.copyfileobj(req.stream, copy, batch.READ_BYTES)
    except BaseException:
        copy.close()
        raise
    copy.seek(0)
    return copy


def file_response(file: IO[bytes], size: int, **options: Any) -> Response:
    """Send a finished answer file: whole when small, else streamed a block at a time."""
    if size <= IN_MEMORY_BYTES:
        with file:
            return Response(file.read(), **options)

    def blocks() -> Iterator[bytes]:
        with file:
            while block := file.read(batch.READ_BYTES):
                yield block

    response = Response(blocks(), **options)
    response.content_length = size
    response.call_on_close(file.close)  # a client that leaves early
    return response


def _wants_csv(req: Request) -> bool:
    """Whether the client prefers a CSV answer to JSON (its Accept header)."""
    accept = req.environ.get("HTTP_ACCEPT", "")
    # The usual headers (none, */*, application/json) can only mean JSON: Werkzeug's parse and
    # match of */* against the five answer types cost a request about 36 us.
    if "csv" not in accept and "text/" not in accept and "q=" not in accept:
        return False
    return req.accept_mimetypes.best_match(ANSWER_TYPES) in CSV_ANSWERS


def _explain(req: Request) -> bool:
    """The predict query's one parameter, explain: true or false (absent: false).

    :raise ApiError: 400, another parameter, explain given twice, or neither true nor false.
    """
    if not req.query_string:  # the usual request: nothing to parse
        return False
    unknown = [key for key in req.args if key not in PREDICT_PARAMETERS]
    if unknown:  # as an unknown field in the body: a misspelt parameter would be ignored unseen
        raise ApiError(400, f"unknown query parameter {unknown[0]!r}; {req.path} takes {', '.join(PREDICT_PARAMETERS)}")
    given = req.args.getlist("explain")
    if not given:
        return False
    if len(given) > 1:
        raise ApiError(400, f"query parameter 'explain' is given {len(given)} times; give it once")
    word = given[0].strip().lower()
    if word in ("true", "1", "yes", "on"):
        return True
    if word in ("false", "0", "no", "off", ""):
        return False
    raise ApiError(400, f"query parameter 'explain' must be true or false, got {given[0]!r}")


@bp.post("/predict")
def predict() -> Any:
    """Predict one passenger, an array of them, or a CSV file of them (up to MAX_ROWS)."""
    # The objects behind Flask's proxies, looked up once: each access through a proxy costs a lookup.
    req: Request = request._get_current_object()  # type: ignore[attr-defined]
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    mimetype = req.mimetype
    if mimetype in JSON_TYPES or mimetype.endswith("+json"):
        kind = "json"
    elif mimetype in CSV_TYPES:
        kind = "csv"
    else:
        raise ApiError(
            415,
            f"unsupported Content-Type {mimetype or '(none)'!r}: "
            "send application/json (a passenger or an array) or text/csv (competition layout)",
        )
    check_encoding(req)
    service = get_service(app)
    try:
        predictor = service.require_predictor()
    except ModelUnavailable as exc:
        raise ApiError(503, str(exc)) from None
    as_csv = _wants_csv(req)
    explain = _explain(req)
    if explain and as_csv:
        raise ApiError(400, "explain=true needs a JSON answer: ask with Accept: application/json")
    if explain:
        try:
            predictor.explain([])
        except ModelError as exc:
            raise ApiError(501, str(exc)) from None
    answers = batch.Answers("csv" if as_csv else "json", predictor.version, explain=explain)
    try:
        with body_stream(req) as body:
            batch.run(
                body,
                kind=kind,
                predictor=predictor,
                recorder=service.recorder if service.recording else None,
                answers=answers,
                source="api",
                max_rows=app.config["MAX_ROWS"],
                chunk_rows=app.config["BATCH_CHUNK_ROWS"],
            )
    except batch.BodyError as exc:
        answers.close()
        raise ApiError(413 if exc.too_large else 400, str(exc)) from None
    except BaseException:
        answers.close()
        raise
    file, size = answers.finish()
    return file_response(
        file,
        size,
        mimetype="text/csv" if as_csv else "application/json",
        headers={"X-Model-Version": predictor.version},
    )


@bp.get("/health")
def health() -> Any:
    """Liveness: the process answers."""
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready() -> Any:
    """Readiness: a model is loaded and the spool takes rows (else 503); the database and the
    recorder's backlog.

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
        # A table locked by another session makes this wait, not fail: at most the connect timeout.
        check_tables(timeout=current_app.config["DATABASE_CONNECT_TIMEOUT"])
    except Exception as exc:  # any driver error means "degraded", never a 500
        current_app.logger.warning("readiness: database check failed: %s", exc)
        db.session.rollback()
        database = {"status": "degraded", "error": type(exc).__name__}
    if database["status"] == "ok" and recorder["database"] == "degraded":
        database = {"status": "degraded", "error": recorder["last_error"]}
    spool_state = service.recorder.spool_status() if service.recording else {"status": "off"}
    if not model["loaded"] or spool_state["status"] == "failing":
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
    return jsonify(
        {"status": status, "model": model, "database": database, "spool": spool_state, "backlog": backlog}
    ), code


@bp.get("/model")
def model_card() -> Any:
    """The loaded model's card (version, data, metrics, features), its accuracy on recorded
    outcomes, and the other versions (titanic_web/api/model_routes.py)."""
    from titanic_web.api.model_routes import describe_model

    service = get_service(current_app)
    try:
        predictor = service.require_predictor()
    except ModelUnavailable as exc:
        raise ApiError(503, str(exc)) from None
    return jsonify(describe_model(predictor.card))
