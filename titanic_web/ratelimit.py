"""Rate limits (Flask-Limiter): RATE_LIMIT per client address on every route that takes a POST.

Each POST route counts on its own (the form, the batch page, /api/predict, ...); GET routes,
and so the health, readiness and metrics probes, are never limited. The counts live in
RATELIMIT_STORAGE_URI: "memory://" counts in each gunicorn worker apart, so N workers let
N times the limit through; a Redis URL makes them one count for all workers and machines.
"""

from __future__ import annotations

import math
import time
from typing import Any, cast

from flask import Flask, render_template
from flask_limiter import Limiter, RateLimitExceeded
from flask_limiter.util import get_remote_address
from limits import parse_many

from titanic_web.config import ConfigError

#: Paths never limited, whatever methods they take: probes must answer an overloaded client too.
EXEMPT_PATHS = frozenset({"/api/health", "/api/ready", "/metrics"})

#: How long a Redis command may take before the limiter gives up on Redis (seconds); a URL's
#: own socket_timeout / socket_connect_timeout query parameters win.
REDIS_TIMEOUT = 0.5


def _storage_options(uri: str) -> dict[str, Any]:
    if uri.startswith(("redis://", "rediss://", "redis+unix://", "redis+sentinel://", "redis+cluster://")):
        return {"socket_timeout": REDIS_TIMEOUT, "socket_connect_timeout": REDIS_TIMEOUT}
    return {}


def _limited_endpoints(app: Flask) -> list[str]:
    """Every endpoint with a rule that takes POST, but those of the exempt paths."""
    rules = list(app.url_map.iter_rules())
    exempt = {rule.endpoint for rule in rules if rule.rule in EXEMPT_PATHS}
    return sorted({rule.endpoint for rule in rules if "POST" in (rule.methods or ())} - exempt)


def retry_after_seconds(limiter: Limiter) -> int:
    """Whole seconds until the breached limit's window lets the client in again (at least 1)."""
    limit = limiter.current_limit
    if limit is None:
        return 1
    return max(1, math.ceil(limit.reset_at - time.time()))


def check_rate_limit(text: str) -> None:
    """Refuse a RATE_LIMIT the limiter cannot read: it would otherwise be skipped, and nothing limited.

    :raise ConfigError: naming the setting and its value.
    """
    try:
        parse_many(text)
    except ValueError:
        raise ConfigError(f"RATE_LIMIT must be like '1200/minute' or '20/second;1000/hour', got {text!r}") from None


def init_app(app: Flask) -> Limiter | None:
    """Bind a limiter to the app (one per app, so each test app counts apart) and limit its POST routes.

    Call after the blueprints are registered. A storage that fails (Redis down) falls back to
    counting in the worker's memory, logged, rather than failing predictions.
    """
    if not app.config.get("RATELIMIT_ENABLED", True):
        return None
    check_rate_limit(app.config["RATE_LIMIT"])
    uri = app.config["RATELIMIT_STORAGE_URI"]
    limiter = Limiter(
        get_remote_address,  # the client's address; behind a proxy, TRUSTED_PROXIES makes it the real one
        storage_uri=uri,
        storage_options=_storage_options(uri),
        key_prefix=app.config.get("RATELIMIT_KEY_PREFIX", "titanic-web"),
        in_memory_fallback_enabled=True,
        swallow_errors=True,  # a broken storage must not fail a prediction: count in memory instead
        headers_enabled=False,  # Retry-After is set on 429 answers only (below), not on every answer
    )
    limiter.init_app(app)
    # Only the decorated POST routes below are limited, and their decorator checks them. The
    # before-request check init_app adds would check every request again against the default
    # limits (there are none): a second full pass through the limiter's bookkeeping, about as
    # costly as the first, so it is taken out.
    app.before_request_funcs[None].remove(limiter._check_request_limit)
    # The limit is read once, here: a callable would be called and parsed again on every request.
    rate = limiter.limit(app.config["RATE_LIMIT"], methods=["POST"])
    for endpoint in _limited_endpoints(app):
        # RouteLimit's overloads type the wrapper as possibly async; it returns what the view returns.
        app.view_functions[endpoint] = cast(Any, rate(app.view_functions[endpoint]))

    @app.errorhandler(RateLimitExceeded)
    def handle_rate_limited(exc: RateLimitExceeded) -> Any:
        from titanic_web.errors import json_error, wants_json

        wait = retry_after_seconds(limiter)
        message = f"too many requests: the limit is {exc.description} per client; try again in {wait} s"
        if wants_json():
            response, status = json_error(429, message, retry_after=wait)
        else:
            page = render_template(
                "error.html",
                status=429,
                title="Too Many Requests",
                message=f"You have sent more than {exc.description} here. Please wait {wait} seconds and try again.",
            )
            response, status = app.make_response(page), 429
            response.status_code = 429
        response.headers["Retry-After"] = str(wait)
        return response, status

    return limiter
