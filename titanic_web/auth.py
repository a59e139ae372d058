"""API keys: off for local use, required on /api when API_KEYS is set; admin actions always need an admin key.

A key is presented as ``Authorization: Bearer <key>``, ``X-API-Key: <key>``, or (for a
browser) HTTP Basic auth with the key as the password. Keys are compared in constant time.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from flask import Flask, current_app, render_template, request

from titanic_web.config import ConfigError

#: The shortest key accepted: a guessable key is worse than none, since it looks like protection.
MIN_KEY_LENGTH = 16

#: /api routes that stay open when API_KEYS is set: probes and the API's own description.
PUBLIC_API_PATHS = frozenset({"/api/health", "/api/ready", "/api/openapi.json"})

HOW_TO_SEND = "send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
HOW_TO_GENERATE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"

View = TypeVar("View", bound=Callable[..., Any])


class AuthError(Exception):
    """A request without the key it needs: 401 (no or unknown key) or 403 (not allowed)."""

    def __init__(self, status: int, message: str, *, challenge: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.challenge = challenge


def parse_keys(text: str, *, source: str) -> tuple[str, ...]:
    """The keys in text (separated by commas or new lines; '#' starts a comment line), checked.

    :raise ConfigError: a key is shorter than MIN_KEY_LENGTH or holds white space; the
        message names the source, never the key.
    """
    keys: list[str] = []
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        for part in line.split(","):
            key = part.strip()
            if not key:
                continue
            if any(ch.isspace() for ch in key):
                raise ConfigError(f"{source}: key {len(keys) + 1} contains white space; separate keys by commas")
            if len(key) < MIN_KEY_LENGTH:
                raise ConfigError(
                    f"{source}: key {len(keys) + 1} is shorter than {MIN_KEY_LENGTH} characters; "
                    f"generate one with {HOW_TO_GENERATE}"
                )
            keys.append(key)
    return tuple(dict.fromkeys(keys))


def keys_from_env(name: str) -> tuple[str, ...]:
    """The keys in variable `name` (comma-separated) plus those in the file named by `name`_FILE.

    :raise ConfigError: the file cannot be read, or a key is unusable.
    """
    keys = parse_keys(os.environ.get(name, ""), source=name)
    file_name = os.environ.get(f"{name}_FILE", "").strip()
    if file_name:
        try:
            text = Path(file_name).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {file_name}: {exc.strerror or exc}") from None
        keys += parse_keys(text, source=f"{name}_FILE {file_name}")
    return tuple(dict.fromkeys(keys))


def key_matches(presented: str, keys: Iterable[str]) -> bool:
    """Whether presented is one of keys, in time that depends on neither the keys nor the match.

    Both sides are hashed first, so compare_digest always compares 32 bytes, and every key
    is compared (no early exit), so timing does not tell which key, or how much of one, matched.
    """
    digest = hashlib.sha256(presented.encode()).digest()
    found = False
    for key in keys:
        found |= hmac.compare_digest(digest, hashlib.sha256(key.encode()).digest())
    return found


def presented_key() -> str | None:
    """The key the request carries: a Bearer token, an X-API-Key header, or a Basic auth password."""
    header = request.headers.get("X-API-Key", "").strip()
    if header:
        return header
    auth = request.authorization
    if auth is None:
        return None
    if auth.type == "bearer" and auth.token:
        return auth.token.strip()
    if auth.type == "basic" and auth.password:
        return auth.password
    return None


def _challenge(*, admin: bool) -> str:
    # A browser (not /api) is asked for Basic auth, so it shows its log-in box.
    if request.path.startswith("/api/") or request.path == "/api":
        return 'Bearer realm="titanic-web"'
    return f'Basic realm="titanic-web{" admin" if admin else ""}", charset="UTF-8"'


def check_api_key() -> None:
    """Before every /api request: when API_KEYS is set, require one of them (or an admin key).

    :raise AuthError: 401 naming what is missing or wrong.
    """
    keys: tuple[str, ...] = current_app.config.get("API_KEYS") or ()
    if not keys or not (request.path.startswith("/api/") or request.path == "/api"):
        return
    if request.path.rstrip("/") in PUBLIC_API_PATHS:
        return
    key = presented_key()
    if key is None:
        raise AuthError(401, f"this API needs a key: {HOW_TO_SEND}", challenge=_challenge(admin=False))
    if not key_matches(key, keys + tuple(current_app.config.get("ADMIN_API_KEYS") or ())):
        raise AuthError(401, "the API key is not valid", challenge=_challenge(admin=False))


def check_admin_key() -> None:
    """Require an admin key (ADMIN_API_KEYS), whether or not API_KEYS is set.

    :raise AuthError: 403 when no admin key is configured or the key is not an admin key,
        401 when the request carries no key or an unknown one.
    """
    admin_keys: tuple[str, ...] = current_app.config.get("ADMIN_API_KEYS") or ()
    if not admin_keys:
        raise AuthError(
            403,
            "this is an admin action and no admin key is configured: set ADMIN_API_KEYS (or "
            f"ADMIN_API_KEYS_FILE) on the server, generated with {HOW_TO_GENERATE}, and {HOW_TO_SEND}",
        )
    key = presented_key()
    if key is None:
        raise AuthError(
            401,
            f"this is an admin action: it needs an admin key; {HOW_TO_SEND} "
            "(a browser may give it as the password of HTTP Basic auth)",
            challenge=_challenge(admin=True),
        )
    if key_matches(key, admin_keys):
        return
    if key_matches(key, current_app.config.get("API_KEYS") or ()):
        raise AuthError(403, "this is an admin action: the key is valid but not an admin key (ADMIN_API_KEYS)")
    raise AuthError(401, "the admin key is not valid", challenge=_challenge(admin=True))


def require_admin(view: View) -> View:
    """Decorate a view so that only a request with an admin key (ADMIN_API_KEYS) reaches it."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        check_admin_key()
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def init_app(app: Flask) -> None:
    """Check API keys before /api requests and answer AuthError as JSON (API) or a page (browser)."""
    app.before_request(check_api_key)

    @app.errorhandler(AuthError)
    def handle_auth_error(exc: AuthError) -> Any:
        from titanic_web.errors import json_error, wants_json

        if wants_json():
            response, status = json_error(exc.status, exc.message)
        else:
            from http import HTTPStatus

            title = HTTPStatus(exc.status).phrase
            page = render_template("error.html", status=exc.status, title=title, message=exc.message)
            response, status = app.make_response(page), exc.status
            response.status_code = status
        if exc.challenge:
            response.headers["WWW-Authenticate"] = exc.challenge
        return response, status
