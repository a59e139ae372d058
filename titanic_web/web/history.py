"""The history page: stored predictions, filtered and paged; one prediction's details; the CSV export."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from flask import Response, abort, current_app, render_template, request
from sqlalchemy.orm import Session

from titanic_web import export, monitoring
from titanic_web.auth import require_admin
from titanic_web.extensions import db
from titanic_web.features import CATEGORICAL_FEATURES, FEATURES
from titanic_web.models import SOURCES, now_utc
from titanic_web.schema import FIELD_NAMES
from titanic_web.web import bp

#: The query parameters that filter (kept in the page links and the download link).
FILTER_ARGS = ("source", "model", "verdict", "from", "to")


def _filter_args() -> dict[str, str]:
    return {name: request.args[name] for name in FILTER_ARGS if request.args.get(name)}


@bp.get("/history")
def history() -> Any:
    """Stored predictions, newest first, filtered by source, model version, verdict and dates."""
    session = db.session()
    args = _filter_args()
    page = None
    error = None
    try:
        filters = monitoring.filters_from_args(request.args)
        page = monitoring.history_page(
            session,
            filters,
            size=current_app.config["HISTORY_PAGE_ROWS"],
            after=request.args.get("after") or None,
            before=request.args.get("before") or None,
        )
    except monitoring.FilterError as exc:
        error = str(exc)
    versions = monitoring.model_versions(session)
    if args.get("model") and args["model"] not in versions:
        versions.append(args["model"])  # keep the chosen value on the form even if it matches nothing
    return render_template(
        "history.html",
        page=page,
        error=error,
        args=args,
        versions=versions,
        sources=SOURCES,
        verdicts=list(monitoring.VERDICTS),
    ), (400 if error else 200)


@bp.get("/history/<uuid:prediction_id>")
def prediction_detail(prediction_id: uuid.UUID) -> Any:
    """One stored prediction: the answer, the features the model saw, the raw input, any outcome."""
    detail = monitoring.prediction_detail(db.session(), prediction_id)
    if detail is None:
        abort(404, description=f"no stored prediction has the id {prediction_id}")
    stored = detail.features.features if detail.features is not None else {}
    raw = detail.features.raw_input if detail.features is not None else {}
    # Known names first in their usual order, then anything else the row holds.
    feature_rows = [(name, stored.get(name)) for name in FEATURES if name in stored]
    feature_rows += [(name, value) for name, value in stored.items() if name not in FEATURES]
    raw_rows = [(name, raw.get(name)) for name in FIELD_NAMES if name in raw]
    raw_rows += [(name, value) for name, value in raw.items() if name not in FIELD_NAMES]
    return render_template(
        "prediction.html",
        detail=detail,
        p=detail.prediction,
        created_at=monitoring.as_utc(detail.prediction.created_at),
        recorded_at=None if detail.outcome is None else monitoring.as_utc(detail.outcome.recorded_at),
        feature_rows=feature_rows,
        raw_rows=raw_rows,
        categorical=CATEGORICAL_FEATURES,
    )


@bp.get("/history/export.csv")
@require_admin  # an admin action: the whole history leaves the server
def history_export() -> Any:
    """The history page's predictions (its filters applied) as the export CSV, streamed in chunks."""
    try:
        filters = monitoring.filters_from_args(request.args)
    except monitoring.FilterError as exc:
        abort(400, description=str(exc))
    chunk_rows = current_app.config["EXPORT_CHUNK_ROWS"]
    engine = db.engine

    def body() -> Iterator[str]:
        # A session of its own, closed when the stream ends or the client goes away: the
        # body is produced after the view returns, outside the request's own session.
        with Session(engine) as session:
            yield from export.csv_text(export.chunks(session, filters, chunk_rows=chunk_rows))

    name = f"predictions-{now_utc().strftime('%Y%m%dT%H%M%SZ')}.csv"
    return Response(
        body(),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
