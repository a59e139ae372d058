"""Flask commands: train, predict, init-db, recorder status|replay, model list|show|activate."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from titanic_web import csvio
from titanic_web.extensions import db
from titanic_web.predictor import ModelError, Predictor
from titanic_web.schema import InputError

#: The outcomes extract's name in a version's folder, beside its artifact and card.
OUTCOMES_FILE = "outcomes.csv"


@click.command("train")
@with_appcontext
@click.option(
    "--data",
    "data_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Training CSV in the competition layout [default: TRAIN_DATA, model/data/train.csv].",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Registry folder to add the new version to [default: MODEL_DIR, model/registry].",
)
@click.option(
    "--with-outcomes",
    is_flag=True,
    help="Also train on the served passengers whose outcomes are recorded (their stored input).",
)
@click.option(
    "--activate/--no-activate",
    default=True,
    show_default=True,
    help="Make the new version the active one (running servers switch to it).",
)
def train_command(data_path: Path | None, out_dir: Path | None, with_outcomes: bool, activate: bool) -> None:
    """Cross-validate the candidate pipelines, fit the best, register it as a new version."""
    from titanic_web import registry
    from titanic_web.training import TrainingError, train

    data = data_path or Path(current_app.config["TRAIN_DATA"])
    root = out_dir or Path(current_app.config["MODEL_DIR"])
    if registry.is_single_model(root):
        raise click.ClickException(
            f"{root} holds a single model (model.json), not a registry of versions: "
            "point MODEL_DIR or --out at a registry folder such as model/registry"
        )
    try:
        staging = registry.staging_dir(root)
    except registry.RegistryError as exc:
        raise click.ClickException(str(exc)) from None

    def progress(message: str) -> None:
        # The staging folder becomes the version's folder once trained: its paths would name files
        # gone by the time the operator reads them. The version's folder is said at the end.
        if not message.startswith("wrote "):
            click.echo(message.replace(str(staging / OUTCOMES_FILE), f"{OUTCOMES_FILE} (in the version's folder)"))

    try:
        extra = [_outcomes_extract(data, staging)] if with_outcomes else []
        result = train(data_path=data, out_dir=staging, extra_data=[p for p in extra if p], progress=progress)
        info, new = registry.register(root, staging)
    except (TrainingError, registry.RegistryError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)  # a failed run leaves no half-made version
    cv = result.card["cv"]
    click.echo(
        f"model {info.version}: {result.card['estimator']}, "
        f"CV accuracy {cv['accuracy_mean']:.4f} ± {cv['accuracy_std']:.4f}, ROC AUC {cv['roc_auc_mean']:.4f}"
    )
    if new:
        click.echo(f"registered version {info.version}: {root / info.version}")
    else:
        click.echo(f"version {info.version} was already registered in {root} (same data and code, same model)")
    if not activate:
        # `model activate` looks in MODEL_DIR: another registry (--out) must be named.
        elsewhere = Path(current_app.config["MODEL_DIR"]).resolve() != root.resolve()
        command = f"{f'MODEL_DIR={root} ' if elsewhere else ''}flask --app titanic_web model activate {info.version}"
        click.echo(f"not activated (--no-activate): `{command}` does it")
        return
    _activate(root, info.version)


def _outcomes_extract(data: Path, folder: Path) -> Path | None:
    """Write the served passengers with recorded outcomes that add an example to `data`; None if none do."""
    from titanic_web import outcomes
    from titanic_web.training import load_training_data

    X, y = load_training_data(data)
    known = [{**row, "Survived": int(label)} for row, label in zip(X.to_dict("records"), y, strict=True)]
    known_rows = cast(list[dict[str, Any]], known)  # a frame's records: column names are text
    try:
        served = outcomes.served_with_outcomes(db.session)
    except Exception as exc:  # the operator needs the cause, not a trace
        db.session.rollback()
        raise click.ClickException(f"cannot read the recorded outcomes from the database: {exc}") from None
    rows = outcomes.new_examples(served, known_rows)
    skipped = len(served) - len(rows)
    if not rows:
        click.echo(
            f"outcomes: {len(served)} served passenger(s) with a recorded outcome, none new"
            f"{f' ({skipped} already in {data.name} or repeated)' if skipped else ''}; training on {data.name} alone"
        )
        return None
    path = folder / OUTCOMES_FILE
    outcomes.write_extract(rows, path)
    click.echo(
        f"outcomes: {len(rows)} served passenger(s) with a recorded outcome added"
        f"{f' ({skipped} left out: already in {data.name} or repeated)' if skipped else ''}"
    )
    return path


def _activate(root: Path, version: str) -> None:
    """Activate a version (loaded and checked first) and say what running servers will do."""
    from titanic_web import registry

    try:
        previous = registry.read_active(root)
    except registry.RegistryError:
        previous = None
    try:
        registry.activate(root, version)
    except registry.RegistryError as exc:
        raise click.ClickException(str(exc)) from None
    was = "" if previous in (None, version) else f" (was {previous})"
    seconds = current_app.config.get("MODEL_CHECK_SECONDS", 1.0)
    if seconds > 0:
        click.echo(
            f"version {version} is active{was}: running servers switch to it within about "
            f"{seconds:g} second{'s' if seconds != 1 else ''}"
        )
    else:  # no watcher: a server reads ACTIVE only when it starts
        click.echo(
            f"version {version} is active{was}: running servers serve it only once restarted "
            "(MODEL_CHECK_SECONDS is 0: they do not watch the registry)"
        )


@click.command("predict")
@with_appcontext
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the submission here instead of standard output.",
)
@click.option("--version", "version", metavar="VERSION", help="Use this registered version instead of the active one.")
def predict_command(csv_file: Path, output: Path | None, version: str | None) -> None:
    """Write a Kaggle submission (PassengerId,Survived) for a test.csv-layout file, with the active model."""
    from titanic_web import registry
    from titanic_web.export import why_not

    model_dir = Path(current_app.config["MODEL_DIR"])
    try:
        if version is None:
            predictor = registry.load_predictor(model_dir)
        else:
            predictor = Predictor.from_dir(registry.version_dir(model_dir, version))
        passengers = csvio.read_passengers(csvio.decode(csv_file.read_bytes()), max_rows=sys.maxsize)
    except (ModelError, csvio.CsvError, registry.RegistryError) as exc:
        raise click.ClickException(str(exc)) from None
    except InputError as exc:
        lines = [f"  line {e.line}: {e.field or 'row'} {e.message}" for e in exc.errors[:20]]
        more = f"\n  ... and {len(exc.errors) - 20} more" if len(exc.errors) > 20 else ""
        raise click.ClickException(
            f"{csv_file}: {len(exc.errors)} invalid value(s)\n" + "\n".join(lines) + more
        ) from None
    predictions = predictor.predict(passengers)
    body = csvio.submission((p.get("PassengerId"), r.survived) for p, r in zip(passengers, predictions, strict=True))
    if output is None:
        click.echo(body, nl=False)
    else:
        try:
            output.write_text(body)
        except OSError as exc:
            raise click.ClickException(f"cannot write {output}: {why_not(output, exc)}") from None
        survived = sum(r.survived for r in predictions)
        click.echo(
            f"wrote {output}: {len(predictions)} passengers, {survived} predicted to survive "
            f"(model {predictor.version})",
            err=True,
        )


@contextmanager
def database_errors(doing: str) -> Iterator[None]:
    """A command's database that cannot be reached or read: one line saying so, not a trace.

    :raise click.ClickException: on the driver's OperationalError.
    """
    from sqlalchemy.exc import OperationalError

    from titanic_web.recorder import first_line

    try:
        yield
    except OperationalError as exc:
        db.session.rollback()
        url = db.engine.url.render_as_string(hide_password=True)
        raise click.ClickException(
            f"cannot {doing}: the database at {url} answered: {first_line(exc.orig or exc)}"
        ) from None


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the database or upgrade it to the latest schema (same as `flask db upgrade`)."""
    with database_errors("create or upgrade the database"):
        _init_db()


def _init_db() -> None:
    from flask_migrate import stamp, upgrade
    from sqlalchemy import inspect

    inspector = inspect(db.engine)
    tables = set(inspector.get_table_names())
    if {"predictions", "feature_store"} <= tables and "alembic_version" not in tables:
        # Made by create_all, before migrations existed: recorded at the revision whose schema
        # they have, then upgraded from there like any other database.
        columns = {column["name"] for column in inspector.get_columns("predictions")}
        revision = _adopted_revision(columns, tables)
        stamp(revision=revision)
        click.echo(f"existing tables adopted at revision {revision}")
    upgrade()
    click.echo(f"database at the latest schema: {db.engine.url.render_as_string(hide_password=True)}")


#: The revisions whose schema `db.create_all` could have made, and the columns of predictions and
#: the tables that only the second has: databases made before migrations existed have the first.
_FIRST_REVISION = "f623dc86193f"
_SECOND_REVISION = "1b7d3e5a9c20"
_SECOND_COLUMNS = {"request_id", "latency_ms"}
_SECOND_TABLES = {"outcomes"}


def _adopted_revision(columns: set[str], tables: set[str]) -> str:
    """The migration revision that tables made by create_all stand at.

    :raise click.ClickException: they match neither schema that create_all made.
    """
    if columns >= _SECOND_COLUMNS and tables >= _SECOND_TABLES:
        return _SECOND_REVISION
    if not columns & _SECOND_COLUMNS and not tables & _SECOND_TABLES:
        return _FIRST_REVISION
    raise click.ClickException(
        "the tables predictions and feature_store have no migration history (no alembic_version "
        "table) and match no schema of this project's migrations: compare them with "
        "migrations/versions/, then record the right revision with `flask --app titanic_web db "
        "stamp REVISION` and run init-db again"
    )


@click.group("recorder")
def recorder_group() -> None:
    """The spool of answered predictions waiting for the database."""


def _database_check() -> str:
    from titanic_web.models import check_tables
    from titanic_web.recorder import first_line

    try:
        check_tables()
    except Exception as exc:  # report, never crash: this is what an operator runs when things are wrong
        db.session.rollback()
        reason = first_line(exc)  # some exceptions carry no message
        return f"degraded ({type(exc).__name__}: {reason[:200]})" if reason else f"degraded ({type(exc).__name__})"
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


@click.group("model")
def model_group() -> None:
    """The registry of trained versions: list, show, activate (also to roll back)."""


def _registry_root() -> Path:
    from titanic_web import registry

    root = Path(current_app.config["MODEL_DIR"])
    if registry.is_single_model(root):
        raise click.ClickException(
            f"MODEL_DIR {root} is a single model folder, not a registry of versions: "
            "point MODEL_DIR at a registry such as model/registry"
        )
    return root


@model_group.command("list")
@with_appcontext
def model_list_command() -> None:
    """Every registered version: training time, CV accuracy, accuracy on outcomes; * marks the active one."""
    from titanic_web import outcomes, registry

    root = _registry_root()
    found = registry.versions(root)
    if not found:
        raise click.ClickException(f"no versions in {root}: run `flask --app titanic_web train` to create one")
    try:
        active = registry.read_active(root)
    except registry.RegistryError as exc:
        click.echo(f"warning: {exc}", err=True)
        active = None
    try:
        by_version = outcomes.accuracy_by_version(db.session)
        note = ""
    except Exception as exc:  # the list stays useful without the database
        db.session.rollback()
        by_version, note = {}, f"outcomes unavailable: database error ({type(exc).__name__})"
    click.echo(f"  {'version':<14}{'trained at (UTC)':<27}{'CV accuracy':<13}{'outcomes':<18}estimator")
    for info in found:
        mark = "*" if info.version == active else " "
        cv = "-" if info.cv_accuracy is None else f"{info.cv_accuracy:.4f}"
        seen = by_version.get(info.version)
        on_outcomes = f"{seen['accuracy']:.4f} ({seen['count']})" if seen and seen["count"] else "-"
        estimator = f"{info.card.get('estimator', '?')} ({info.card.get('chosen', '?')})"
        click.echo(f"{mark} {info.version:<14}{info.trained_at or '-':<27}{cv:<13}{on_outcomes:<18}{estimator}")
    if active is None:
        click.echo("no version is active: `flask --app titanic_web model activate VERSION` makes one active")
    if note:
        click.echo(note, err=True)


@model_group.command("show")
@click.argument("version", required=False)
@with_appcontext
def model_show_command(version: str | None) -> None:
    """Print a version's model card (JSON); without VERSION, the active one's."""
    from titanic_web import registry

    root = _registry_root()
    try:
        if version is None:
            version = registry.read_active(root)
            if version is None:
                raise click.ClickException(f"no version is active in {root}: name one (see `model list`)")
        path = registry.version_dir(root, version)
    except registry.RegistryError as exc:
        raise click.ClickException(str(exc)) from None
    from titanic_web.training import CARD_NAME

    click.echo(json.dumps(json.loads((path / CARD_NAME).read_text()), indent=2))


@model_group.command("activate")
@click.argument("version")
@with_appcontext
def model_activate_command(version: str) -> None:
    """Make VERSION the active model (also how to roll back); running servers switch to it live."""
    _activate(_registry_root(), version)


def register(app: Flask) -> None:
    """Add the commands to `flask --app titanic_web ...`."""
    for command in (train_command, predict_command, init_db_command, recorder_group, model_group):
        app.cli.add_command(command)
