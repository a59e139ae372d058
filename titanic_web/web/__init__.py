"""The HTML blueprint: the passenger form and its result, the batch page, the dashboard and the history."""

from flask import Blueprint

# Annotated: the view modules import bp back, and mypy cannot infer a type through that cycle.
bp: Blueprint = Blueprint("web", __name__)

from titanic_web.web import history, monitor  # noqa: E402,F401  (/history and /dashboard on bp)
from titanic_web.web.batch import render_expired_batch  # noqa: E402  (registers the batch views on bp)
from titanic_web.web.views import render_expired_form  # noqa: E402  (registers the views on bp)

__all__ = ["bp", "render_expired_batch", "render_expired_form"]
