"""Extension objects, created once here and bound to an app in create_app."""

from typing import TYPE_CHECKING, Any

from flask import Flask, Request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base for the project's tables."""


db = SQLAlchemy(model_class=Base)
csrf = CSRFProtect()
migrate = Migrate()

if TYPE_CHECKING:
    from flask_sqlalchemy.model import Model as _FlaskModel

    class Model(Base, _FlaskModel):
        """What db.Model is to the type checker: Base with Flask-SQLAlchemy's model mixin."""

else:
    # mypy takes no attribute (db.Model) as a base class; the tables subclass this name instead.
    Model = db.Model


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, with its signer built once per secret key.

    Flask builds the signer (a serializer and its key derivation) on every request,
    for every request opens a session, including the API's, which never uses one.
    """

    def __init__(self) -> None:
        self._signer: tuple[Any, URLSafeTimedSerializer | None] | None = None

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        keys = (app.secret_key, tuple(app.config.get("SECRET_KEY_FALLBACKS") or ()))
        cached = self._signer
        if cached is None or cached[0] != keys:
            cached = self._signer = (keys, super().get_signing_serializer(app))
        return cached[1]

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        """An empty session when the request carries no cookie at all (every API call from a
        program): Flask's own way parses the absent Cookie header into an empty mapping first."""
        if "HTTP_COOKIE" not in request.environ and app.secret_key:
            return self.session_class()
        return super().open_session(app, request)
