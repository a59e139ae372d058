"""The JSON API blueprint: /api/predict, /api/health, /api/ready, /api/model."""

from flask import Blueprint

bp = Blueprint("api", __name__)

from titanic_web.api import (  # noqa: E402  (the view modules need bp, so they come after it)
    docs,  # noqa: F401  (/api/openapi.json on bp; /docs on docs.page_bp)
    model_routes,  # noqa: F401  (/api/model/activate, /api/outcomes)
    routes,  # noqa: F401  (registers the views on bp)
)
