"""The batch page: upload a competition CSV, follow its progress, download the submission.

Without JavaScript the form posts and the page answers when the file is done.
With it (``static/batch.js``) the upload shows its progress, and the answer is
a stream of JSON lines: progress events while the rows are checked and
predicted, then the rendered outcome. Either way the rows go through
:func:`titanic_web.batch.process` with source ``batch``, and the submission CSV
is kept in BATCH_DIR for BATCH_KEEP_HOURS under an unguessable name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from flask import (
    Response,
    abort,
    current_app,
    render_template,
    request,
    send_from_directory,
    stream_with_context,
    url_for,
)

from titanic_web import batch, get_service
from titanic_web.recorder import RecorderError
from titanic_web.schema import FieldError, InputError
from titanic_web.service import ModelUnavailable
from titanic_web.web import bp
from titanic_web.web.forms import BatchForm

#: What batch.js asks for: progress events, one JSON object per line.
EVENTS = "application/x-ndjson"
#: Row errors shown on the page at most (the count says how many in all).
SHOWN_ERRORS = 100
_TOKEN = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Outcome:
    """How a batch ended, for the page."""

    status: int
    summary: batch.Summary | None = None
    download: str | None = None
    message: str | None = None
    errors: list[FieldError] = field(default_factory=list)
    error_count: int = 0


@bp.route("/batch", methods=["GET", "POST"])
def batch_page() -> Any:
    """Upload a CSV of passengers; get a summary and a submission file."""
    form = BatchForm()
    if not form.validate_on_submit():
        return render_template("batch.html", form=form), 422 if form.is_submitted() else 200
    upload = form.file.data
    if EVENTS in request.accept_mimetypes.values():
        # The request's files are closed when the view returns: the stream reads its own copy.
        copy = tempfile.SpooledTemporaryFile(max_size=1 << 20)  # noqa: SIM115  (the event stream closes it)
        shutil.copyfileobj(upload.stream, copy, batch.READ_BYTES)
        copy.seek(0)
        return Response(stream_with_context(_events(_process(copy), copy)), mimetype=EVENTS)
    outcome = batch.finish(_process(upload.stream))
    return render_template("batch.html", form=BatchForm(formdata=None), outcome=outcome), outcome.status


@bp.get("/batch/<token>/submission.csv")
def batch_download(token: str) -> Any:
    """A finished batch's submission (PassengerId,Survived), while it is kept."""
    directory = Path(current_app.config["BATCH_DIR"])
    path = directory / f"{token}.csv"
    # Expired files go when a new batch is kept, or here: one nobody replaced is still not served.
    if not _TOKEN.match(token) or not path.is_file() or _remove_if_expired(path, _cutoff()):
        abort(
            404,
            description=(
                "No such batch result: results are kept for "
                f"{current_app.config['BATCH_KEEP_HOURS']:g} hours. Upload the file again."
            ),
        )
    return send_from_directory(
        directory, f"{token}.csv", mimetype="text/csv", as_attachment=True, download_name="submission.csv", max_age=0
    )


def _process(stream: IO[bytes]) -> Generator[batch.Progress, None, Outcome]:
    """Run the batch; yield progress; return the outcome (errors included, never raised)."""
    service = get_service(current_app)
    try:
        predictor = service.require_predictor()
    except ModelUnavailable as exc:
        return Outcome(503, message=f"No prediction: {exc}")
    answers = batch.Answers("csv", predictor.version)
    try:
        summary = yield from batch.process(
            stream,
            kind="csv",
            predictor=predictor,
            recorder=service.recorder if service.recording else None,
            answers=answers,
            source="batch",
            max_rows=current_app.config["MAX_ROWS"],
            chunk_rows=current_app.config["BATCH_CHUNK_ROWS"],
        )
        token = _keep(answers)
    except batch.BodyError as exc:
        return Outcome(413 if exc.too_large else 400, message=f"The file cannot be used: {exc}.")
    except InputError as exc:
        total = getattr(exc, "total", len(exc.errors))
        return Outcome(422, errors=exc.errors[:SHOWN_ERRORS], error_count=total)
    except RecorderError:
        return Outcome(
            503,
            message="The predictions could not be kept (local disk refused them), so none are given. Try again later.",
        )
    finally:
        answers.close()
    return Outcome(200, summary=summary, download=url_for("web.batch_download", token=token))


def _keep(answers: batch.Answers) -> str:
    """Move the finished submission into BATCH_DIR under a new token; drop expired ones."""
    directory = Path(current_app.config["BATCH_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    _remove_expired(directory, _cutoff())
    token = uuid.uuid4().hex
    file, _ = answers.finish()
    partial = directory / f".{token}.tmp"
    with open(partial, "wb") as out:
        while block := file.read(batch.READ_BYTES):
            out.write(block)
    os.replace(partial, directory / f"{token}.csv")  # whole or not at all
    return token


def _cutoff() -> float:
    """When (seconds since the epoch) a kept file must have been written to be still kept: BATCH_KEEP_HOURS ago."""
    return time.time() - current_app.config["BATCH_KEEP_HOURS"] * 3600


def _remove_expired(directory: Path, cutoff: float) -> None:
    for path in [*directory.glob("*.csv"), *directory.glob(".*.tmp")]:
        _remove_if_expired(path, cutoff)


def _remove_if_expired(path: Path, cutoff: float) -> bool:
    """Delete the file if it was last written before cutoff; whether it is gone (expired or already missing)."""
    try:
        if path.stat().st_mtime >= cutoff:
            return False
        path.unlink()
    except FileNotFoundError:
        pass
    return True


def _events(steps: Generator[batch.Progress, None, Outcome], stream: IO[bytes]) -> Iterator[str]:
    """Progress events while the rows are read, then the rendered outcome: one JSON object a line."""
    with stream:
        yield from _event_lines(steps, stream)


def _event_lines(steps: Generator[batch.Progress, None, Outcome], stream: IO[bytes]) -> Iterator[str]:
    size = _size(stream)
    yield json.dumps({"event": "started", "bytes": size}) + "\n"
    while True:
        try:
            step = next(steps)
        except StopIteration as done:
            outcome: Outcome = done.value
            break
        # The CSV reader closes the body once it has read it all (its text wrapper goes with it).
        read = size if getattr(stream, "closed", False) else _position(stream)
        yield (
            json.dumps(
                {
                    "event": "progress",
                    "rows": step.rows,
                    "errors": step.errors,
                    "fraction": round(min(1.0, read / size), 4) if size and read is not None else None,
                }
            )
            + "\n"
        )
    html = render_template("_batch_outcome.html", outcome=outcome)
    yield json.dumps({"event": "done", "status": outcome.status, "html": html}) + "\n"


def _size(stream: IO[bytes]) -> int | None:
    try:
        position = stream.tell()
        size = stream.seek(0, os.SEEK_END)
        stream.seek(position)
        return size
    except (OSError, ValueError, AttributeError):
        return None


def _position(stream: IO[bytes]) -> int | None:
    try:
        return stream.tell()
    except (OSError, ValueError, AttributeError):
        return None


def render_expired_batch(reason: str) -> Any:
    """The batch page again after its CSRF token failed (a file input cannot be kept)."""
    message = (
        "Your form had expired (or came from another page), so nothing was predicted. "
        "Choose the file and upload it again."
    )
    return render_template("batch.html", form=BatchForm(formdata=None), expired=message, reason=reason), 400
