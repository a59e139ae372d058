"""The JSON API blueprint: /api/predict, /api/health, /api/ready, /api/model."""

from flask import Blueprint

bp = Blueprint("api", __name__)

from titanic_web.api import routes  # noqa: E402,F401  (registers the views on bp)
from titanic_web.api import model_routes  # noqa: E402,F401  (/api/model/activate, /api/outcomes)
from titanic_web.api import docs  # noqa: E402,F401  (/api/openapi.json on bp; /docs on docs.page_bp)
