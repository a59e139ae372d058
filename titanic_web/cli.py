"""Flask commands: train, predict, init-db, recorder status|replay."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from titanic_web import csvio
from titanic_web.extensions import db
from titanic_web.predictor import ModelError, Predictor
from titanic_web.schema import InputError


@click.command("train")
@with_appcontext
@click.option("--data", "data_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Training CSV in the competition layout [default: TRAIN_DATA, model/data/train.csv].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the artifact and its card [default: MODEL_DIR, model/artifacts].")
def train_command(data_path: Path | None, out_dir: Path | None) -> None:
    """Cross-validate the candidate pipelines, fit the best, write artifact + model card."""
    from titanic_web.training import TrainingError, train

    try:
        result = train(
            data_path=data_path or Path(current_app.config["TRAIN_DATA"]),
            out_dir=out_dir or Path(current_app.config["MODEL_DIR"]),
            progress=click.echo,
        )
    except TrainingError as exc:
        raise click.ClickException(str(exc)) from None
    cv = result.card["cv"]
    click.echo(
        f"model {result.card['version']}: {result.card['estimator']}, "
        f"CV accuracy {cv['accuracy_mean']:.4f} ± {cv['accuracy_std']:.4f}, ROC AUC {cv['roc_auc_mean']:.4f}"
    )
    click.echo("Running servers keep their model until restarted.")


@click.command("predict")
@with_appcontext
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the submission here instead of standard output.")
def predict_command(csv_file: Path, output: Path | None) -> None:
    """Write a Kaggle submission (PassengerId,Survived) for a test.csv-layout file."""
    try:
        predictor = Predictor.from_dir(Path(current_app.config["MODEL_DIR"]))
        passengers = csvio.read_passengers(csvio.decode(csv_file.read_bytes()), max_rows=sys.maxsize)
    except (ModelError, csvio.CsvError) as exc:
        raise click.ClickException(str(exc)) from None
    except InputError as exc:
        lines = [f"  line {e.line}: {e.field or 'row'} {e.message}" for e in exc.errors[:20]]
        more = f"\n  ... and {len(exc.errors) - 20} more" if len(exc.errors) > 20 else ""
        raise click.ClickException(f"{csv_file}: {len(exc.errors)} invalid value(s)\n" + "\n".join(lines) + more) from None
    predictions = predictor.predict(passengers)
    body = csvio.submission((p.get("PassengerId"), r.survived) for p, r in zip(passengers, predictions))
    if output is None:
        click.echo(body, nl=False)
    else:
        output.write_text(body)
        survived = sum(r.survived for r in predictions)
        click.echo(
            f"wrote {output}: {len(predictions)} passengers, {survived} predicted to survive "
            f"(model {predictor.version})",
            err=True,
        )


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the database or upgrade it to the latest schema (same as `flask db upgrade`)."""
    from flask_migrate import stamp, upgrade
    from sqlalchemy import inspect

    tables = set(inspect(db.engine).get_table_names())
    if {"predictions", "feature_store"} <= tables and "alembic_version" not in tables:
        # Made by create_all before migrations existed: same schema, so record it as current.
        stamp()
        click.echo("existing tables adopted as the latest schema")
    else:
        upgrade()
    click.echo(f"database at the latest schema: {db.engine.url.render_as_string(hide_password=True)}")


@click.group("recorder")
def recorder_group() -> None:
    """The spool of answered predictions waiting for the database."""


def _database_check() -> str:
    from titanic_web.models import check_tables

    try:
        check_tables()
    except Exception as exc:  # report, never crash: this is what an operator runs when things are wrong
        db.session.rollback()
        return f"degraded ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    return "ok"


@recorder_group.command("status")
@with_appcontext
def recorder_status_command() -> None:
    """Rows spooled on this machine and not yet in the database, and the database state."""
    import time

    from titanic_web import spool

    directory = Path(current_app.config["SPOOL_DIR"])
    found = spool.scan(directory)
    age = "" if found["oldest_spooled_at"] is None else f", oldest {time.time() - found['oldest_spooled_at']:.1f} s old"
    click.echo(f"spool: {directory}")
    click.echo(
        f"backlog: {found['rows']} row(s) in {found['segments']} segment(s){age}; "
        f"{found['orphaned']} segment(s) left by stopped processes"
    )
    click.echo(f"database: {_database_check()} ({db.engine.url.render_as_string(hide_password=True)})")


@recorder_group.command("replay")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to keep retrying the database.")
@with_appcontext
def recorder_replay_command(timeout: float) -> None:
    """Deliver every spool segment left by stopped processes to the database now.

    Segments of running workers are theirs to deliver and are left alone. A
    replay never duplicates a row: every write is keyed by the prediction uuid.
    """
    from titanic_web import get_service

    recorder = get_service(current_app).recorder
    adopted, delivered = recorder.replay(timeout=timeout)
    status = recorder.status()
    recorder.stop(timeout=0)
    click.echo(f"adopted {adopted} segment(s); wrote {status['rows_written']} new row(s)")
    if not delivered:
        raise click.ClickException(
            f"{status['backlog_rows']} row(s) could not be written ({status['last_error']}); "
            "they stay spooled: run replay again when the database is back"
        )


def register(app: Flask) -> None:
    """Add the commands to `flask --app titanic_web ...`."""
    for command in (train_command, predict_command, init_db_command, recorder_group):
        app.cli.add_command(command)
