"""Security settings and wiring: response headers (Flask-Talisman), the proxy in front,
rate limits, API keys, and the checks production mode makes before it starts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flask import Flask, Response
from flask_talisman import Talisman
from werkzeug.middleware.proxy_fix import ProxyFix

from titanic_web import auth, ratelimit
from titanic_web.config import ConfigError, _bool_env, _env_text, _int_env

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

APP_ENVS = ("development", "production")

#: The pages use only their own stylesheet and scripts: nothing inline, no other origin.
#: Inline SVG with presentation attributes (fill="...", stroke="...") is not styling in CSP's
#: sense and is allowed; style="..." attributes and <style> elements are refused.
CONTENT_SECURITY_POLICY: dict[str, str] = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "object-src": "'none'",
    "frame-ancestors": "'none'",
    "form-action": "'self'",
    "base-uri": "'self'",
}
#: Full URL to this site's own pages (Flask-WTF checks the Referer of HTTPS form posts), nothing to others.
REFERRER_POLICY = "same-origin"


def settings_from_env() -> dict[str, Any]:
    """Read the security settings from the environment; the defaults suit a local install."""
    app_env = (_env_text("APP_ENV") or "development").strip().lower()
    if app_env not in APP_ENVS:
        raise ConfigError(f"APP_ENV must be one of {', '.join(APP_ENVS)}, got {app_env!r}")
    return {
        "APP_ENV": app_env,
        # Off by default: the app serves plain HTTP on 127.0.0.1 and a proxy in front speaks HTTPS.
        "FORCE_HTTPS": _bool_env("FORCE_HTTPS", False),
        # How many proxies in front set X-Forwarded-For/-Proto/-Host; 0 trusts none of those headers.
        "TRUSTED_PROXIES": _int_env("TRUSTED_PROXIES", 0, minimum=0),
        "RATELIMIT_ENABLED": _bool_env("RATELIMIT_ENABLED", True),
        # 20 a second sustained, per client and route: far above a person, enough for a script that
        # predicts one passenger a request; more passengers go in one request as an array or CSV.
        "RATE_LIMIT": _env_text("RATE_LIMIT") or "1200/minute",
        "RATELIMIT_STORAGE_URI": _env_text("RATELIMIT_STORAGE_URI") or "memory://",
        "RATELIMIT_KEY_PREFIX": _env_text("RATELIMIT_KEY_PREFIX") or "titanic-web",
        "API_KEYS": auth.keys_from_env("API_KEYS"),
        "ADMIN_API_KEYS": auth.keys_from_env("ADMIN_API_KEYS"),
    }


def check_production(app: Flask) -> None:
    """In production (APP_ENV=production), refuse debug mode and a generated SECRET_KEY.

    Call before the secret key is filled in: a key generated into instance/ is fine for one
    machine in development, but production workers on several machines must share one.

    :raise ConfigError: naming every setting that is wrong.
    """
    if app.config.get("APP_ENV") != "production":
        return
    problems = []
    if app.debug:
        problems.append("debug mode is on (unset FLASK_DEBUG and DEBUG): it shows code and values to clients")
    if not (app.config.get("SECRET_KEY") or _env_text("SECRET_KEY")):  # blank is unset, as load_secret_key reads it
        problems.append(
            "SECRET_KEY is not set in the environment (generate one with "
            "python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    if problems:
        raise ConfigError("APP_ENV=production refuses to start: " + "; ".join(problems))
    if app.config.get("RATELIMIT_ENABLED", True) and app.config["RATELIMIT_STORAGE_URI"].startswith("memory://"):
        app.logger.warning(
            "RATELIMIT_STORAGE_URI is memory://: each gunicorn worker counts RATE_LIMIT on its own; "
            "set a Redis URL to share one count"
        )


class StaticTalisman(Talisman):
    """Talisman with its headers worked out once, at start, and added by a WSGI middleware.

    The headers here are the same for every response: no view has Talisman options of its
    own and no policy takes a nonce, so only Strict-Transport-Security depends on the request
    (HTTPS or not). Talisman itself builds them, once for a plain request and once for an
    HTTPS one. :class:`SecurityHeaders` then puts the matching list on every answer as it
    leaves the app, in place of Talisman's after-request function, which read its options,
    parsed the policy and set each header through Werkzeug's checks on every response.
    """

    def init_app(self, app: Flask, **options: Any) -> None:
        if options.get("content_security_policy_nonce_in"):
            raise ValueError("StaticTalisman builds its headers once: a CSP nonce needs Talisman itself")
        super().init_app(app, **options)
        self.plain = self._headers_for(app, "http://localhost/")
        self.secure = self._headers_for(app, "https://localhost/")
        app.before_request_funcs[None].remove(self._make_nonce)  # no nonce is ever asked for
        app.after_request_funcs[None].remove(self._set_response_headers)  # the middleware sets them
        if not (self.force_https or self.session_cookie_secure):
            # With neither, Talisman's before-request check can redirect nothing and set nothing.
            app.before_request_funcs[None].remove(self._force_https)
        app.wsgi_app = SecurityHeaders(app.wsgi_app, plain=self.plain, secure=self.secure)  # type: ignore[method-assign]

    def _headers_for(self, app: Flask, url: str) -> list[tuple[str, str]]:
        with app.test_request_context(url):
            response = super()._set_response_headers(Response())
        return [(name, value) for name, value in response.headers.items() if name.lower() != "content-type"]


class UntrustedForwarding:
    """WSGI middleware for an app that trusts no proxy: a client's own ``X-Forwarded-Proto``
    is dropped. Talisman reads that header wherever it asks whether a request came over HTTPS,
    so a client could otherwise claim HTTPS over plain HTTP and skip FORCE_HTTPS's redirect."""

    def __init__(self, wsgi_app: WSGIApplication) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        environ.pop("HTTP_X_FORWARDED_PROTO", None)
        return self.wsgi_app(environ, start_response)


class SecurityHeaders:
    """WSGI middleware: every answer gets the security headers, ``secure`` for HTTPS, else ``plain``.

    A header of the same name set by a view is replaced, as Talisman does. HTTPS is the
    request's scheme: the client's own, or the one a trusted proxy forwarded (:class:`ProxyFix`).
    """

    def __init__(
        self, wsgi_app: WSGIApplication, *, plain: list[tuple[str, str]], secure: list[tuple[str, str]]
    ) -> None:
        self.wsgi_app = wsgi_app
        self.plain, self.secure = list(plain), list(secure)
        self._plain_names = frozenset(name.lower() for name, _ in self.plain)
        self._secure_names = frozenset(name.lower() for name, _ in self.secure)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        secure = environ.get("wsgi.url_scheme") in ("https", "wss")
        added, names = (self.secure, self._secure_names) if secure else (self.plain, self._plain_names)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            kept = [header for header in headers if header[0].lower() not in names]
            return start_response(status, kept + added, exc_info)

        return self.wsgi_app(environ, start)


def init_app(app: Flask) -> None:
    """Install the proxy fix, the security headers, the rate limits and the API key checks.

    Call after the blueprints are registered: the rate limits wrap the POST views.
    """
    force_https = bool(app.config.get("FORCE_HTTPS", False))
    app.extensions["titanic.talisman"] = StaticTalisman(
        app,
        force_https=force_https,
        # HSTS tells browsers to use nothing but HTTPS here for a year: only when the operator says so
        strict_transport_security=force_https,
        session_cookie_secure=force_https,  # a Secure cookie is never sent back over plain HTTP
        content_security_policy=CONTENT_SECURITY_POLICY,
        frame_options="DENY",
        referrer_policy=REFERRER_POLICY,
        x_content_type_options=True,
    )
    proxies = int(app.config.get("TRUSTED_PROXIES", 0))
    if proxies:
        # Only what the trusted proxies set: without it, every client shares the proxy's address
        # (one rate-limit count for all) and HTTPS requests look like plain HTTP. Outermost, so
        # the security headers see the scheme the client used.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)  # type: ignore[method-assign]
    else:
        app.wsgi_app = UntrustedForwarding(app.wsgi_app)  # type: ignore[method-assign]
    ratelimit.init_app(app)
    auth.init_app(app)
