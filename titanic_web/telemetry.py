"""Monitoring wired into the app: GET /metrics, the X-Request-ID header, one JSON log line a request.

Each request is opened (:func:`titanic_web.requestlog.begin`) before any other
before-request function runs, stamped with its id once its response exists, and
settled once it is answered: then its latency, status and answers go to the
metrics and its line to the log. A plain answer is settled when the view's work
is done; a streamed one (the batch page's progress, a large answer file) when
its stream ends, since the stream may still be predicting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from flask import Flask, Request, Response, current_app, request

from titanic_web import requestlog
from titanic_web.metrics import Metrics

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_KEY = "HTTP_X_REQUEST_ID"  # the header's name in the WSGI environ

log = logging.getLogger(__name__)


def init_app(app: Flask) -> Metrics:
    """Create the app's metrics, hook every request, and add GET /metrics."""
    metrics = Metrics(directory=app.config.get("PROMETHEUS_MULTIPROC_DIR"))
    app.extensions["metrics"] = metrics
    service = app.extensions.get("titanic")
    if service is not None:
        service.recorder.metrics = metrics
    metrics.set_model_version(_model_version(app))
    watcher = app.extensions.get("titanic.model_watcher")
    if watcher is not None:  # a switch shows in this worker's gauge even if it answers nothing after it
        watcher.on_switch = metrics.set_model_version
    requestlog.configure_logger(app.config["LOG_LEVEL"])
    # First of the before-request functions, so a request refused by a later one (a CSRF
    # failure, a rate limit) still has its id, and is counted and logged.
    app.before_request_funcs.setdefault(None, []).insert(0, _begin)
    # After-request functions run in reverse order of registration: this one runs last
    # and sees the final response.
    app.after_request_funcs.setdefault(None, []).insert(0, _stamp)
    app.teardown_request(_teardown)
    app.add_url_rule("/metrics", endpoint="metrics", view_func=metrics_view)
    return metrics


def _begin() -> None:
    # The objects behind Flask's proxies, looked up once: each access through a proxy costs a lookup.
    req: Request = request._get_current_object()  # type: ignore[attr-defined]
    info = requestlog.begin(req.environ.get(_REQUEST_ID_KEY))  # the environ: cheaper than the headers view
    _describe(info, req)


def _describe(info: requestlog.RequestInfo, req: Request) -> None:
    rule = req.url_rule
    info.method, info.route, info.endpoint = req.method, None if rule is None else rule.rule, req.endpoint


def _stamp(response: Response) -> Response:
    info = requestlog.current()
    if info is None:  # refused before this app's first before-request function ran
        req: Request = request._get_current_object()  # type: ignore[attr-defined]
        info = requestlog.begin(req.environ.get(_REQUEST_ID_KEY))
        _describe(info, req)
    info.status = response.status_code
    response.headers[REQUEST_ID_HEADER] = info.id
    if response.is_streamed and not response.direct_passthrough and _has_body(response, info.method):
        # Settle when the stream ends (or the server closes it unread), not when the view returns.
        info.streamed = True
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        response.response = _follow(response.response, info, app)
        response.call_on_close(lambda: _settle(info, app))
    return response


def _has_body(response: Response, method: str) -> bool:
    status = response.status_code
    return method != "HEAD" and status >= 200 and status not in (204, 304)


def _follow(body: Iterable[Any], info: requestlog.RequestInfo, app: Flask) -> Iterator[Any]:
    """A streamed body, with its request current while it is produced; settled once it ends."""
    requestlog.resume(info)
    try:
        yield from body
    finally:
        requestlog.end()
        _settle(info, app)


def _teardown(exc: BaseException | None) -> None:
    info = requestlog.current()
    if info is None:
        return
    requestlog.end()
    if not info.streamed:
        _settle(info, current_app._get_current_object())  # type: ignore[attr-defined]


def _settle(info: requestlog.RequestInfo, app: Flask) -> None:
    """Count the request and log its line, once."""
    if info.settled:
        return
    info.settled = True
    seconds = time.perf_counter() - info.started
    # Monitoring must never turn an answer into an error: a plain answer is sent after this runs.
    try:
        _account(info, seconds, app)
    except Exception:
        log.exception("monitoring failed for request %s", info.id)


def _model_version(app: Flask) -> str | None:
    service = app.extensions.get("titanic")
    predictor = None if service is None else service.predictor
    return None if predictor is None else predictor.version


def _account(info: requestlog.RequestInfo, seconds: float, app: Flask) -> None:
    metrics: Metrics | None = app.extensions.get("metrics")
    answered = info.answered
    version = _model_version(app)
    if metrics is not None:
        metrics.set_model_version(version)  # the model can be switched while the worker runs
        metrics.observe_request(info.endpoint, info.status, seconds)
        if answered is not None and answered.rows:
            metrics.observe_predictions(
                rows=answered.rows, survived=answered.survived, counts=answered.counts, total=answered.probability_sum
            )
        if info.invalid:
            metrics.count_validation_failures(info.invalid)
    if requestlog.log.isEnabledFor(logging.INFO):
        requestlog.emit(
            requestlog.log_line(
                info,
                method=info.method,
                route=info.route,
                endpoint=info.endpoint,
                status=info.status,
                latency_ms=seconds * 1000.0,
                model_version=version,
            )
        )


def metrics_view() -> Response:
    """Prometheus exposition of every metric, summed over all workers under gunicorn."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    metrics: Metrics = app.extensions["metrics"]
    metrics.set_model_version(_model_version(app))
    service = app.extensions.get("titanic")
    if service is not None:
        service.recorder.publish_backlog()  # this worker's part, as of now
    body, content_type = metrics.render(request.headers.get("Accept"))
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})
