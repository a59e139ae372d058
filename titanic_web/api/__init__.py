"""The JSON API blueprint: /api/predict, /api/health, /api/ready, /api/model."""

from flask import Blueprint

bp = Blueprint("api", __name__)

from titanic_web.api import routes  # noqa: E402,F401  (registers the views on bp)
