"""Form views: render, validate with the schema, predict, show the result on the same page."""

from __future__ import annotations

from typing import Any

from flask import current_app, render_template

from titanic_web import get_service, requestlog, schema
from titanic_web.predictor import ModelError
from titanic_web.service import ModelUnavailable
from titanic_web.web import bp
from titanic_web.web.explanation import ExplanationChart, explanation_chart
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
                service = get_service(current_app)
                version, answers = service.predict([clean], source="form")
                result = {"answer": answers[0], "model_version": version, "why": _why(service, clean, version)}
            except ModelUnavailable as exc:
                model_error = str(exc)
                status = 503
    elif form.is_submitted():
        status = 422
        requestlog.note_invalid([f for f in form.errors if f != "csrf_token"], source="form")  # for GET /metrics
    return render_template("index.html", form=form, result=result, model_error=model_error), status


def _why(service: Any, passenger: dict[str, Any], version: str) -> ExplanationChart | None:
    """The answer's explanation chart, or None when the model cannot explain (the answer still shows)."""
    predictor = service.predictor
    if predictor is None or predictor.version != version:  # a new model was activated meanwhile
        return None
    try:
        return explanation_chart(predictor.explain(predictor.score([passenger])[1])[0])
    except ModelError as exc:
        current_app.logger.info("no explanation: %s", exc)
        return None


def render_expired_form(reason: str) -> Any:
    """Re-render a submitted form whose CSRF token failed, keeping its values."""
    form = PassengerForm(meta={"csrf": True})
    message = (
        "Your form had expired (or came from another page), so nothing was predicted. "
        "Your values are kept: check them and submit again."
    )
    return render_template("index.html", form=form, result=None, expired=message, reason=reason), 400
