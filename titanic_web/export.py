"""The retraining export: stored passengers with their predictions and outcomes, in chunks.

Each row is one ``feature_store`` row joined with its ``predictions`` row and,
when one was recorded, its ``outcomes`` row. The first columns are the
competition's (the validated raw input, then ``Survived``: the recorded
outcome, empty when none), so an export of passengers with outcomes is a
training file for ``flask --app titanic_web train --data``. Rows are read and
written ``chunk_rows`` at a time (a server-side cursor on PostgreSQL), so memory
stays flat however many rows there are.
"""

from __future__ import annotations

import csv
import io
import json
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import Select, Text, cast, func, select
from sqlalchemy.orm import Session

from titanic_web.features import CATEGORICAL_FEATURES, FEATURES
from titanic_web.models import SOURCES, FeatureRow, OutcomeRow, PredictionRow
from titanic_web.monitoring import Filters, as_utc
from titanic_web.schema import FIELD_NAMES

#: The competition's columns (as validated), its label (the recorded outcome), the
#: prediction, then the engineered features the model saw.
PREDICTION_COLUMNS = (
    "prediction_id",
    "created_at",
    "model_version",
    "source",
    "predicted_survived",
    "probability",
    "latency_ms",
    "request_id",
    "outcome_recorded_at",
)
FEATURE_COLUMNS = tuple(f"feature_{name}" for name in FEATURES)
COLUMNS = (*FIELD_NAMES, "Survived", *PREDICTION_COLUMNS, *FEATURE_COLUMNS)
CHUNK_ROWS = 5000
SUFFIXES = (".csv", ".parquet")


class ExportError(Exception):
    """The export cannot be written (an unknown file type, or Parquet without pyarrow)."""


def statement(filters: Filters, *, outcomes_only: bool = False) -> Select[*tuple[Any, ...]]:
    """The export's rows, oldest first: feature_store joined with predictions and (outer) outcomes."""
    query: Select[*tuple[Any, ...]] = (
        select(
            # As stored text: each chunk's JSON is parsed in one call (see chunks).
            cast(FeatureRow.raw_input, Text),
            cast(FeatureRow.features, Text),
            PredictionRow.id,
            PredictionRow.created_at,
            PredictionRow.model_version,
            PredictionRow.source,
            PredictionRow.survived,
            PredictionRow.probability,
            PredictionRow.latency_ms,
            PredictionRow.request_id,
            OutcomeRow.survived,
            OutcomeRow.recorded_at,
        )
        .join(PredictionRow, PredictionRow.id == FeatureRow.prediction_id)
        .outerjoin(OutcomeRow, OutcomeRow.prediction_id == FeatureRow.prediction_id)
        .where(*filters.conditions())
        .order_by(PredictionRow.created_at, PredictionRow.id)
    )
    if outcomes_only:
        query = query.where(OutcomeRow.survived.is_not(None))
    return query


def count(session: Session, filters: Filters, *, outcomes_only: bool = False) -> int:
    """How many rows the export will have."""
    query = (
        select(func.count()).select_from(FeatureRow).join(PredictionRow, PredictionRow.id == FeatureRow.prediction_id)
    )
    if outcomes_only:
        query = query.join(OutcomeRow, OutcomeRow.prediction_id == FeatureRow.prediction_id)
    return int(session.scalar(query.where(*filters.conditions())) or 0)


def _parse_all(texts: Iterable[str | None]) -> list[dict[str, Any]]:
    """Many stored JSON objects parsed in one call (a missing one as {})."""
    return [record or {} for record in json.loads("[" + ",".join(text or "null" for text in texts) + "]")]


def chunks(
    session: Session, filters: Filters, *, outcomes_only: bool = False, chunk_rows: int = CHUNK_ROWS
) -> Iterator[list[tuple[Any, ...]]]:
    """The export's rows, ``chunk_rows`` at a time, each a tuple in :data:`COLUMNS` order."""
    # yield_per streams: a server-side cursor on PostgreSQL, fetchmany on SQLite.
    result = session.execute(statement(filters, outcomes_only=outcomes_only).execution_options(yield_per=chunk_rows))
    for part in result.partitions():
        raws = _parse_all(row[0] for row in part)
        engineered = _parse_all(row[1] for row in part)
        yield [
            (
                *map(raw.get, FIELD_NAMES),
                outcome,
                str(pid),
                as_utc(created_at),
                version,
                source,
                survived,
                probability,
                latency,
                request_id,
                None if recorded_at is None else as_utc(recorded_at),
                *map(features.get, FEATURES),
            )
            for raw, features, (
                _,
                _,
                pid,
                created_at,
                version,
                source,
                survived,
                probability,
                latency,
                request_id,
                outcome,
                recorded_at,
            ) in zip(raws, engineered, part, strict=True)
        ]


_CREATED = COLUMNS.index("created_at")
_RECORDED = COLUMNS.index("outcome_recorded_at")


def csv_text(parts: Iterable[Sequence[tuple[Any, ...]]]) -> Iterator[str]:
    """CSV text: the header, then one piece per chunk (empty cells for missing values, ISO 8601 times)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")  # writes None as an empty cell
    writer.writerow(COLUMNS)
    yield buffer.getvalue()
    for part in parts:
        buffer.seek(0)
        buffer.truncate()
        for row in part:
            cells = list(row)
            cells[_CREATED] = cells[_CREATED].isoformat()
            if cells[_RECORDED] is not None:
                cells[_RECORDED] = cells[_RECORDED].isoformat()
            writer.writerow(cells)
        yield buffer.getvalue()


def _arrow_schema() -> Any:
    import pyarrow as pa  # type: ignore[import-untyped]  # no type information ships with it

    text, whole, number = pa.string(), pa.int64(), pa.float64()
    moment = pa.timestamp("us", tz="UTC")
    raw_types = {"PassengerId": whole, "Pclass": whole, "SibSp": whole, "Parch": whole, "Age": number, "Fare": number}
    prediction_types = {
        "prediction_id": text,
        "created_at": moment,
        "model_version": text,
        "source": text,
        "predicted_survived": whole,
        "probability": number,
        "latency_ms": number,
        "request_id": text,
        "outcome_recorded_at": moment,
    }
    fields = [(name, raw_types.get(name, text)) for name in FIELD_NAMES]
    fields.append(("Survived", whole))
    fields.extend(prediction_types.items())
    fields.extend((f"feature_{name}", text if name in CATEGORICAL_FEATURES else number) for name in FEATURES)
    return pa.schema(fields)


def require_pyarrow() -> None:
    """Check that Parquet can be written.

    :raise ExportError: pyarrow is not installed.
    """
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        raise ExportError(
            "writing Parquet needs pyarrow, which is not installed: `pip install pyarrow`, or export to a .csv file"
        ) from None


def write(
    path: Path, parts: Iterable[Sequence[tuple[Any, ...]]], *, progress: Callable[[int], None] | None = None
) -> int:
    """Write the rows to ``path`` (CSV, or Parquet for a .parquet name); return how many.

    The file appears whole or not at all: it is written beside, under a name of its
    own (two exports to one path never share it), and renamed at the end.

    :raise ExportError: another suffix, Parquet without pyarrow, or a path that cannot be written.
    """
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ExportError(f"the output file must end in .csv or .parquet, got {path.name!r}")
    if suffix == ".parquet":
        require_pyarrow()
    # Created exclusively ("x") with the usual permissions (mkstemp's would be 0600).
    partial = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
    written = 0

    def counted() -> Iterator[Sequence[tuple[Any, ...]]]:
        nonlocal written
        for part in parts:
            yield part
            written += len(part)
            if progress is not None:
                progress(written)

    try:
        if suffix == ".parquet":
            with partial.open("xb") as binary:
                _write_parquet(binary, counted())
        else:
            with partial.open("x", newline="", encoding="utf-8") as fh:
                for text in csv_text(counted()):
                    fh.write(text)
        os.replace(partial, path)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {why_not(path, exc)}; nothing was written") from None
    finally:
        partial.unlink(missing_ok=True)
    return written


def why_not(path: Path, exc: OSError) -> str:
    """Why a file could not be written there, and what to do (for `export` and `predict`, whose
    option is --output)."""
    if isinstance(exc, IsADirectoryError) or path.is_dir():
        return "it is a folder: name a file in it instead"
    if not path.parent.is_dir():
        return f"the folder {path.parent} does not exist: create it, or choose another --output"
    if isinstance(exc, PermissionError):
        return f"permission denied in {path.parent}: choose a folder you may write to"
    return f"{exc.strerror or exc}: check the disk and the folder {path.parent}"


def _write_parquet(where: BinaryIO, parts: Iterable[Sequence[tuple[Any, ...]]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _arrow_schema()
    with pq.ParquetWriter(where, schema) as writer:
        for part in parts:
            if part:
                columns = list(zip(*part, strict=True))
                writer.write_batch(
                    pa.record_batch(
                        [pa.array(column, type=f.type) for column, f in zip(columns, schema, strict=True)],
                        schema=schema,
                    )
                )


# -- flask --app titanic_web export --------------------------------------------------------------


def parse_moment(text: str, *, end: bool = False) -> datetime:
    """A date (YYYY-MM-DD, or any ISO form of a date alone such as YYYYMMDD) or ISO time as UTC;
    as an end, a date includes its whole day, while a time is a moment.

    :raise ValueError: neither a date nor an ISO time.
    """
    text = text.strip()
    try:
        day = date.fromisoformat(text)  # a date alone, however ISO spells it
    except ValueError:
        pass  # a time, or nothing
    else:
        return datetime.combine(day + timedelta(days=1) if end else day, time(), UTC)
    try:
        return as_utc(datetime.fromisoformat(text))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date (YYYY-MM-DD) or time (YYYY-MM-DDTHH:MM:SS, UTC unless it has an offset)"
        ) from None


def _moment_option(end: bool) -> Callable[[click.Context, click.Parameter, str | None], datetime | None]:
    def convert(_ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
        if value is None:
            return None
        try:
            return parse_moment(value, end=end)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param=param) from None

    return convert


@click.command("export")
@click.option(
    "--since",
    required=True,
    callback=_moment_option(False),
    help="First day (YYYY-MM-DD) or time (ISO, UTC) of predictions to export.",
)
@click.option(
    "--until", callback=_moment_option(True), help="Last day (included whole) or time (excluded) [default: now]."
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The file to write: .csv, or .parquet (needs pyarrow).",
)
@click.option("--source", type=click.Choice(SOURCES), help="Only predictions from this source.")
@click.option("--model-version", help="Only predictions of this model version.")
@click.option(
    "--outcomes-only",
    is_flag=True,
    help="Only passengers with a recorded outcome: a training file for `flask train --data`.",
)
@with_appcontext
def export_command(
    since: datetime,
    until: datetime | None,
    output: Path,
    source: str | None,
    model_version: str | None,
    outcomes_only: bool,
) -> None:
    """Export stored passengers with their predictions and outcomes (the retraining input)."""
    from titanic_web.extensions import db

    session = db.session()
    if until is not None and until <= since:
        raise click.BadParameter("must be after --since", param_hint="--until")
    filters = Filters(source=source, model_version=model_version, since=since, until=until)
    chunk_rows = int(current_app.config["EXPORT_CHUNK_ROWS"])
    from titanic_web.cli import database_errors

    try:
        if output.suffix.lower() not in SUFFIXES:
            raise ExportError(f"the output file must end in .csv or .parquet, got {output.name!r}")
        if output.suffix.lower() == ".parquet":
            require_pyarrow()
        with database_errors("export"):
            total = count(session, filters, outcomes_only=outcomes_only)

            def progress(done: int) -> None:
                # Long exports say how far they are; a single chunk is done before anyone waits.
                if total > chunk_rows:
                    click.echo(f"exported {done:,} of {total:,} rows ({done / total:.0%})", err=True)

            rows = write(
                output, chunks(session, filters, outcomes_only=outcomes_only, chunk_rows=chunk_rows), progress=progress
            )
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    span = f"from {since.isoformat()}" + (f" until {until.isoformat()}" if until else "")
    click.echo(f"wrote {output}: {rows:,} rows ({span})", err=True)
