"""Rate limits (the ``limits`` library): RATE_LIMIT per client address on every route that takes a POST.

Each POST route counts on its own (the form, the batch page, /api/predict, ...); GET routes,
and so the health, readiness and metrics probes, are never limited. The counts live in
RATELIMIT_STORAGE_URI: "memory://" counts in each gunicorn worker apart, so N workers let
N times the limit through; a Redis URL makes them one count for all workers and machines.

The limits are checked by ``limits``' fixed-window strategy (the one Flask-Limiter uses by
default) called from one small decorator: Flask-Limiter's per-request bookkeeping around the
same call (resolving limits, exemptions, contexts) cost about a fifth of a one-passenger
prediction, where the count itself costs a few microseconds.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from flask import Flask, render_template, request
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter
from werkzeug.exceptions import TooManyRequests

from titanic_web.config import ConfigError

#: Paths never limited, whatever methods they take: probes must answer an overloaded client too.
EXEMPT_PATHS = frozenset({"/api/health", "/api/ready", "/metrics"})

#: How long a Redis command may take before the limiter gives up on Redis (seconds); a URL's
#: own socket_timeout / socket_connect_timeout query parameters win.
REDIS_TIMEOUT = 0.5

#: After the storage fails, count in memory this long before trying it again (seconds).
STORAGE_RETRY_SECONDS = 5.0

log = logging.getLogger(__name__)


class RateLimited(TooManyRequests):
    """A client over its limit: the answer names the limit and when to come back (429)."""

    def __init__(self, limit: RateLimitItem, retry_after: int) -> None:
        super().__init__(str(limit))
        self.limit = limit
        self.retry_after = retry_after


def _storage_options(uri: str) -> dict[str, Any]:
    if uri.startswith(("redis://", "rediss://", "redis+unix://", "redis+sentinel://", "redis+cluster://")):
        return {"socket_timeout": REDIS_TIMEOUT, "socket_connect_timeout": REDIS_TIMEOUT}
    return {}


def check_rate_limit(text: str) -> None:
    """Refuse a RATE_LIMIT that cannot be read: it would otherwise limit nothing.

    :raise ConfigError: naming the setting and its value.
    """
    try:
        parse_many(text)
    except ValueError:
        raise ConfigError(f"RATE_LIMIT must be like '1200/minute' or '20/second;1000/hour', got {text!r}") from None


class LazyMemoryStorage(MemoryStorage):
    """``limits``' memory storage without its expiry thread: expired counts are dropped as they are read.

    The library's storage starts a timer thread whenever its last one has finished, to
    drop expired keys; under steady traffic that is a new thread every few requests,
    each start waiting for the thread to run. A count is already dropped when it is
    read after its window (``get``), so the only thing the thread adds is forgetting
    clients that never come back: done here inline, at most once per PURGE_SECONDS.
    """

    #: How often, at most, the counts of clients that have not come back are dropped (seconds).
    PURGE_SECONDS = 60.0

    def __init__(self) -> None:
        super().__init__()
        self.timer.cancel()  # the one the constructor started
        self._next_purge = time.monotonic() + self.PURGE_SECONDS

    def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802  (the library's private hook, by its mangled name)
        now = time.monotonic()
        if now >= self._next_purge:
            self._next_purge = now + self.PURGE_SECONDS
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


def _without_password(uri: str) -> str:
    """The URI with any user and password left out (scheme://host...), for messages and logs."""
    scheme, separator, rest = uri.partition("://")
    return f"{scheme}{separator}{rest.rpartition('@')[2]}" if separator else uri.rpartition("@")[2]


class RateLimiter:
    """Counts each client's POSTs per route against the limits, in the storage or, while it fails, in memory."""

    def __init__(self, limits: Sequence[RateLimitItem], *, storage_uri: str, key_prefix: str) -> None:
        self.limits = tuple(limits)
        self.key_prefix = key_prefix
        self.storage_uri = storage_uri
        try:
            storage = (
                LazyMemoryStorage()
                if storage_uri.startswith("memory://")
                else storage_from_string(storage_uri, **_storage_options(storage_uri))
            )
        except Exception as exc:  # an unknown scheme, a malformed URL, a client library not installed
            shown = _without_password(storage_uri)
            why = str(exc).replace(storage_uri, shown)
            raise ConfigError(f"RATELIMIT_STORAGE_URI cannot be used ({shown}): {type(exc).__name__}: {why}") from None
        self._primary = FixedWindowRateLimiter(storage)
        self._memory = self._primary if isinstance(storage, MemoryStorage) else None
        self._storage_down_until = 0.0

    def hit(self, endpoint: str, client: str) -> RateLimited | None:
        """Count one request of client to endpoint; the refusal to raise if a limit is now exceeded."""
        limiter = self._limiter()
        try:
            return self._hit(limiter, endpoint, client)
        except Exception as exc:  # a storage that fails must not fail the request: count in memory
            if limiter is self._memory:
                raise
            log.warning(
                "rate-limit storage %s failed (%s: %s); counting in this worker's memory for %.0f s",
                _without_password(self.storage_uri),  # never a password in the log
                type(exc).__name__,
                exc,
                STORAGE_RETRY_SECONDS,
            )
            self._storage_down_until = time.monotonic() + STORAGE_RETRY_SECONDS
            return self._hit(self._fallback(), endpoint, client)

    def _limiter(self) -> FixedWindowRateLimiter:
        if self._storage_down_until and time.monotonic() < self._storage_down_until:
            return self._fallback()
        return self._primary

    def _fallback(self) -> FixedWindowRateLimiter:
        if self._memory is None:
            self._memory = FixedWindowRateLimiter(LazyMemoryStorage())
        return self._memory

    def _hit(self, limiter: FixedWindowRateLimiter, endpoint: str, client: str) -> RateLimited | None:
        for limit in self.limits:
            if not limiter.hit(limit, self.key_prefix, endpoint, client):
                reset_at = limiter.get_window_stats(limit, self.key_prefix, endpoint, client).reset_time
                return RateLimited(limit, max(1, math.ceil(reset_at - time.time())))
        return None


def _limited_endpoints(app: Flask) -> list[str]:
    """Every endpoint with a rule that takes POST, but those of the exempt paths."""
    rules = list(app.url_map.iter_rules())
    exempt = {rule.endpoint for rule in rules if rule.rule in EXEMPT_PATHS}
    return sorted({rule.endpoint for rule in rules if "POST" in (rule.methods or ())} - exempt)


def _limit_view(view: Callable[..., Any], limiter: RateLimiter, endpoint: str) -> Callable[..., Any]:
    """The view, counting each POST first (after the before-request checks: a request refused by
    CSRF or the API key check is not counted)."""

    @functools.wraps(view)
    def limited(*args: Any, **kwargs: Any) -> Any:
        req = request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup, not two
        if req.method == "POST":
            refused = limiter.hit(endpoint, req.remote_addr or "unknown")
            if refused is not None:
                raise refused
        return view(*args, **kwargs)

    return limited


def init_app(app: Flask) -> RateLimiter | None:
    """Limit the app's POST routes (one limiter per app, so each test app counts apart).

    Call after the blueprints are registered. A storage that fails (Redis down) falls back to
    counting in the worker's memory, logged, rather than failing predictions.
    """
    if not app.config.get("RATELIMIT_ENABLED", True):
        return None
    check_rate_limit(app.config["RATE_LIMIT"])
    limiter = RateLimiter(
        parse_many(app.config["RATE_LIMIT"]),
        storage_uri=app.config["RATELIMIT_STORAGE_URI"],
        key_prefix=app.config.get("RATELIMIT_KEY_PREFIX", "titanic-web"),
    )
    app.extensions["titanic.ratelimit"] = limiter
    for endpoint in _limited_endpoints(app):
        app.view_functions[endpoint] = _limit_view(app.view_functions[endpoint], limiter, endpoint)

    @app.errorhandler(RateLimited)
    def handle_rate_limited(exc: RateLimited) -> Any:
        from titanic_web.errors import json_error, wants_json

        wait = exc.retry_after
        message = f"too many requests: the limit is {exc.limit} per client; try again in {wait} s"
        if wants_json():
            response, status = json_error(429, message, retry_after=wait)
        else:
            page = render_template(
                "error.html",
                status=429,
                title="Too Many Requests",
                message=f"You have sent more requests here than the limit allows ({exc.limit}). "
                f"Please wait {wait} seconds and try again.",
            )
            response, status = app.make_response(page), 429
            response.status_code = 429
        response.headers["Retry-After"] = str(wait)
        return response, status

    return limiter
