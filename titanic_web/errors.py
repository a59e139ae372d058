"""One error shape per audience: JSON under /api/, an HTML page elsewhere.

Handlers live on the app, not the blueprints, because routing errors (404,
405) are raised before any blueprint is chosen.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify, make_response, render_template, request
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import (
    ClientDisconnected,
    HTTPException,
    InternalServerError,
    MethodNotAllowed,
    RequestEntityTooLarge,
)

from titanic_web.extensions import db
from titanic_web.recorder import RecorderError, first_line
from titanic_web.schema import MAX_LISTED_ERRORS, InputError

#: Retry-After of a page or route that could not read the database.
DATABASE_RETRY_AFTER_SECONDS = 5


class ApiError(Exception):
    """An error a client must fix or wait out: the handler answers it as JSON."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def wants_json() -> bool:
    """Requests to the API get JSON errors; pages get HTML."""
    return request.path == "/api" or request.path.startswith("/api/") or request.path == "/metrics"


def json_error(status: int, message: str, **extra: Any) -> tuple[Response, int]:
    """The API's error body: code, error (the status phrase), message, and extras."""
    from http import HTTPStatus

    body = {"code": status, "error": HTTPStatus(status).phrase, "message": message, **extra}
    return jsonify(body), status


def _http_message(exc: HTTPException) -> str:
    if isinstance(exc, MethodNotAllowed):
        allowed = ", ".join(sorted(m for m in (exc.valid_methods or []) if m not in ("HEAD", "OPTIONS")))
        message = f"{request.method} is not allowed on {request.path}; use {allowed or 'another method'}"
        if request.path.rstrip("/") == "/api/predict":
            message += (
                ": POST one passenger as a JSON object, several as a JSON array,"
                " or a competition-layout CSV as text/csv"
            )
        return message
    if isinstance(exc, RequestEntityTooLarge):
        from flask import current_app

        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        length = request.content_length
        if limit is not None and length is not None and length <= limit:  # the body fits: a form's part did not
            return (
                f"the form is too large: a field over {current_app.config['MAX_FORM_MEMORY_SIZE']:,} bytes "
                f"or more than {current_app.config['MAX_FORM_PARTS']:,} fields"
            )
        return f"request body is larger than the limit of {limit} bytes (MAX_CONTENT_LENGTH)"
    if isinstance(exc, ClientDisconnected):  # raised by Werkzeug when a body ends before its Content-Length
        return (
            f"the request body ended before the {request.content_length or 0:,} bytes its Content-Length "
            "announced: the client disconnected or sent less; nothing was stored"
        )
    return exc.description or exc.name


def register(app: Flask) -> None:
    """Install the app-wide error handlers."""

    @app.errorhandler(ApiError)
    def handle_api_error(exc: ApiError) -> Any:
        return json_error(exc.status, exc.message, **exc.extra)

    @app.errorhandler(InputError)
    def handle_input_error(exc: InputError) -> Any:
        count = getattr(exc, "total", len(exc.errors))
        shown = exc.errors[:MAX_LISTED_ERRORS]  # a batch lists no more already; outcomes may have more
        listed = "" if count == len(shown) else f" (the first {len(shown)} are listed)"
        return json_error(
            422,
            f"{count} invalid field{'s' if count != 1 else ''}{listed}; nothing was stored",
            errors=[e.as_dict() for e in shown],
            error_count=count,
        )

    @app.errorhandler(RecorderError)
    def handle_recorder_error(exc: RecorderError) -> Any:
        # The spool refused the answers: give none rather than answers nobody keeps.
        message = "predictions could not be kept (local disk refused them), so none were answered; try again later"
        if wants_json():
            return json_error(503, message)
        return render_template("error.html", status=503, title="Service Unavailable", message=message), 503

    @app.errorhandler(CSRFError)
    def handle_csrf_error(exc: CSRFError) -> Any:
        if wants_json():
            return json_error(400, exc.description)
        from titanic_web.web import render_expired_batch, render_expired_form

        if request.path.startswith("/batch"):
            return render_expired_batch(exc.description)
        return render_expired_form(exc.description)

    @app.errorhandler(HTTPException)
    def handle_http_error(exc: HTTPException) -> Any:
        status = exc.code or 500
        message = _http_message(exc)
        if wants_json():
            response, _ = json_error(status, message)
        else:
            response = make_response(render_template("error.html", status=status, title=exc.name, message=message))
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # a 405 must say what is allowed
        return response, status

    @app.errorhandler(OperationalError)
    def handle_database_unavailable(exc: OperationalError) -> Any:
        # A database that is down, locked or too slow is the operator's to fix, and the recorder
        # keeps the answers meanwhile: a 503 that says so, a log line, not a 500 and a trace.
        app.logger.warning(
            "database unavailable on %s %s: %s", request.method, request.path, first_line(exc.orig or exc)
        )
        db.session.rollback()
        message = (
            f"the database cannot be read now ({type(exc.orig or exc).__name__}); predictions are still "
            "answered and kept, and show here once it is back"
        )
        if wants_json():
            response, _ = json_error(503, message)
        else:
            title = "Service Unavailable"
            response = make_response(render_template("error.html", status=503, title=title, message=message))
        response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
        return response, 503

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception) -> Any:
        # Never show internals: log the trace, answer a plain 500.
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        db.session.rollback()
        message = "internal error; it has been logged"
        if wants_json():
            return json_error(500, message)
        return render_template("error.html", status=500, title=InternalServerError().name, message=message), 500
