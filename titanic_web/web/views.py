"""Form views: render, validate with the schema, predict, show the result on the same page."""

from __future__ import annotations

from typing import Any

from flask import current_app, render_template

from titanic_web import get_service, schema
from titanic_web.service import ModelUnavailable
from titanic_web.web import bp
from titanic_web.web.forms import PassengerForm


@bp.route("/", methods=["GET", "POST"])
def index() -> Any:
    """The passenger form; a valid submission shows the prediction beside the kept values."""
    form = PassengerForm()
    result = None
    model_error = None
    status = 200
    if form.validate_on_submit():
        clean, errors = schema.validate_passenger(schema.parse_text_row(form.text_values()))
        if errors:  # cannot happen while the form applies the same rules; never predict on bad input
            current_app.logger.error("form and schema disagree: %s", errors)
            status = 422
        else:
            try:
                version, answers = get_service(current_app).predict([clean], source="form")
                result = {"answer": answers[0], "model_version": version}
            except ModelUnavailable as exc:
                model_error = str(exc)
                status = 503
    elif form.is_submitted():
        status = 422
    return render_template("index.html", form=form, result=result, model_error=model_error), status


def render_expired_form(reason: str) -> Any:
    """Re-render a submitted form whose CSRF token failed, keeping its values."""
    form = PassengerForm(meta={"csrf": True})
    message = (
        "Your form had expired (or came from another page), so nothing was predicted. "
        "Your values are kept: check them and submit again."
    )
    return render_template("index.html", form=form, result=None, expired=message, reason=reason), 400
