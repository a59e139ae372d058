"""The flask commands: predict, train, init-db."""

from __future__ import annotations

import csv
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from flask import Flask
from flask_migrate import upgrade

from tests.conftest import PASSENGER, TEST_CSV, count_rows
from tests.integration.helpers import csv_with_cell, kaggle_rows
from titanic_web import models
from titanic_web.extensions import db
from titanic_web.models import FeatureRow, PredictionRow
from titanic_web.predictor import Predictor


def invoke(app: Flask, *args: str) -> Any:
    """Run `flask --app titanic_web ARGS` through the app's test runner (no context pushed for it)."""
    return app.test_cli_runner().invoke(args=list(args))


def read_submission(path: Path) -> list[list[str]]:
    with path.open(newline="") as fh:
        return list(csv.reader(fh))


def table_names(app: Flask) -> set[str]:
    with app.app_context():
        return set(sa.inspect(db.engine).get_table_names())


def test_predict_writes_a_kaggle_submission(app: Flask, tmp_path: Path, predictor: Predictor) -> None:
    out = tmp_path / "out.csv"

    result = invoke(app, "predict", str(TEST_CSV), "-o", str(out))

    assert result.exit_code == 0, result.output + repr(result.exception)
    rows = read_submission(out)
    assert rows[0] == ["PassengerId", "Survived"]
    assert len(rows) == 1 + 418
    assert [int(r[0]) for r in rows[1:]] == list(range(892, 1310))
    survived = [int(r[1]) for r in rows[1:]]
    assert set(survived) <= {0, 1}
    assert survived == [p.survived for p in predictor.predict(kaggle_rows(TEST_CSV))]
    assert "418" in result.output and predictor.version in result.output


def test_predict_without_output_writes_to_stdout(app: Flask) -> None:
    result = invoke(app, "predict", str(TEST_CSV))

    assert result.exit_code == 0, result.output + repr(result.exception)
    lines = result.stdout.splitlines()
    assert lines[0] == "PassengerId,Survived"
    assert len(lines) == 1 + 418


def test_predict_bad_cell_names_the_line(app: Flask, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(csv_with_cell(7, "Pclass", "4"))
    out = tmp_path / "out.csv"

    result = invoke(app, "predict", str(bad), "-o", str(out))

    assert result.exit_code != 0
    assert "line 7" in result.output
    assert "Pclass" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_predict_into_a_missing_folder_says_so(app: Flask, tmp_path: Path) -> None:
    """It crashed with a FileNotFoundError traceback; `flask export` says why, and so does predict."""
    out = tmp_path / "missing" / "out.csv"

    result = invoke(app, "predict", str(TEST_CSV), "-o", str(out))

    assert result.exit_code == 1, result.output + repr(result.exception)
    assert f"Error: cannot write {out}: the folder {out.parent} does not exist: create it" in result.output
    assert "Traceback" not in result.output
    assert not out.parent.exists()


def test_predict_without_model_says_to_train(make_app: Any, no_model_dir: Path, tmp_path: Path) -> None:
    app = make_app(MODEL_DIR=no_model_dir)
    out = tmp_path / "out.csv"

    result = invoke(app, "predict", str(TEST_CSV), "-o", str(out))

    assert result.exit_code != 0
    assert "train" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_train_with_missing_data_file_fails_clearly(app: Flask, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "train.csv"
    out_dir = tmp_path / "artifacts"

    result = invoke(app, "train", "--data", str(missing), "--out", str(out_dir))

    assert result.exit_code != 0
    assert str(missing) in result.output
    assert "not found" in result.output
    assert "Traceback" not in result.output
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_init_db_creates_both_tables(make_app: Any) -> None:
    app = make_app(tables=False)
    assert not {"predictions", "feature_store"} & table_names(app)

    result = invoke(app, "init-db")

    assert result.exit_code == 0, result.output + repr(result.exception)
    assert {"predictions", "feature_store"} <= table_names(app)


def test_init_db_schema_matches_the_models(make_app: Any) -> None:
    """The tables init-db makes are the ones the code writes to (columns and nullability)."""
    app = make_app(tables=False)
    assert invoke(app, "init-db").exit_code == 0, "init-db failed"

    with app.app_context():
        inspector = sa.inspect(db.engine)
        for name in ("predictions", "feature_store"):
            made = {c["name"]: c["nullable"] for c in inspector.get_columns(name)}
            declared = {c.name: c.nullable for c in db.metadata.tables[name].columns}
            assert made == declared, name


def test_init_db_twice_keeps_rows(make_app: Any) -> None:
    app = make_app(tables=False)
    assert invoke(app, "init-db").exit_code == 0, "init-db failed"
    assert app.test_client().post("/api/predict", json=PASSENGER).status_code == 200

    result = invoke(app, "init-db")

    assert result.exit_code == 0, result.output + repr(result.exception)
    assert count_rows(app) == (1, 1)


def migration_head(app: Flask) -> str:
    """The newest revision in migrations/."""
    with app.app_context():
        config = app.extensions["migrate"].migrate.get_config()
        return str(ScriptDirectory.from_config(config).get_current_head())


def stored_revision(app: Flask) -> str:
    with app.app_context():
        return str(db.session.scalar(sa.text("SELECT version_num FROM alembic_version")))


def test_init_db_adopts_tables_made_by_create_all(make_app: Any, database_url: str) -> None:
    """A database whose tables db.create_all made from today's models, with no migration history."""
    app = make_app(tables=False, database_url=database_url)
    with app.app_context():
        db.create_all()
    assert app.test_client().post("/api/predict", json=PASSENGER).status_code == 200
    assert count_rows(app) == (1, 1)

    result = invoke(app, "init-db")

    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "adopted at revision" in result.output
    assert stored_revision(app) == migration_head(app)
    assert app.test_client().post("/api/predict", json=PASSENGER).status_code == 200
    assert count_rows(app) == (2, 2)


def test_init_db_upgrades_tables_made_before_migrations(make_app: Any, database_url: str) -> None:
    """Tables that create_all made before migrations existed have the first migration's schema:
    init-db records them at that revision and upgrades them, keeping their rows."""
    app = make_app(tables=False, database_url=database_url)
    first = "f623dc86193f"
    old_id = uuid.uuid4()
    with app.app_context():
        upgrade(revision=first)
        db.session.execute(sa.text("DROP TABLE alembic_version"))
        db.session.execute(
            sa.insert(PredictionRow).values(
                id=old_id, passenger_id=1, survived=0, probability=0.25, model_version="old", source="api"
            )
        )
        db.session.execute(
            sa.insert(FeatureRow).values(
                prediction_id=old_id, features={"Pclass": 3}, raw_input={"Pclass": 3}, model_version="old"
            )
        )
        db.session.commit()
        assert "request_id" not in {c["name"] for c in sa.inspect(db.engine).get_columns("predictions")}

    result = invoke(app, "init-db")

    assert result.exit_code == 0, result.output + repr(result.exception)
    assert f"adopted at revision {first}" in result.output
    assert stored_revision(app) == migration_head(app)
    with app.app_context():
        inspector = sa.inspect(db.engine)
        assert {"request_id", "latency_ms"} <= {c["name"] for c in inspector.get_columns("predictions")}
        assert "outcomes" in inspector.get_table_names()
    # The request id and latency columns take the recorder's rows now; the old row is kept.
    assert app.test_client().post("/api/predict", json=PASSENGER).status_code == 200
    assert count_rows(app) == (2, 2)
    with app.app_context():
        assert db.session.get(PredictionRow, old_id) is not None


def test_init_db_refuses_tables_of_no_known_schema(make_app: Any) -> None:
    """Half of the second migration's changes, and no history: nothing is stamped or changed."""
    app = make_app(tables=False)
    with app.app_context():
        db.create_all()
        db.session.execute(sa.text("DROP TABLE outcomes"))
        db.session.commit()

    result = invoke(app, "init-db")

    assert result.exit_code == 1
    assert "no migration history" in result.output and "db stamp" in result.output
    assert "alembic_version" not in table_names(app)


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (RuntimeError(), "degraded (RuntimeError)"),  # no message at all
        (RuntimeError("\n  \n"), "degraded (RuntimeError)"),
        (
            RuntimeError("no such table: predictions\n[SQL: SELECT ...]"),
            "degraded (RuntimeError: no such table: predictions)",
        ),
    ],
)
def test_recorder_status_reports_any_database_error(
    app: Flask, monkeypatch: pytest.MonkeyPatch, error: Exception, shown: str
) -> None:
    def fail() -> None:
        raise error

    monkeypatch.setattr(models, "check_tables", fail)
    result = invoke(app, "recorder", "status")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert f"database: {shown} (" in result.output


@pytest.mark.parametrize(
    "args, doing",
    [
        (["init-db"], "create or upgrade the database"),
        (["export", "--since", "2026-01-01", "-o", "{tmp}/out.csv"], "export"),
    ],
    ids=["init-db", "export"],
)
def test_a_command_whose_database_is_unreachable_says_so_in_one_line(
    make_app: Any, tmp_path: Path, args: list[str], doing: str
) -> None:
    """Each printed a 140-line trace; train --with-outcomes already said it in a line."""
    from tests.system.server import free_port

    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"  # a port nobody listens on
    app = make_app(SQLALCHEMY_DATABASE_URI=url, DATABASE_CONNECT_TIMEOUT=2, tables=False)

    result = invoke(app, *[arg.format(tmp=tmp_path) for arg in args])

    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: cannot {doing}: the database at postgresql+psycopg://postgres@127.0.0.1:")
    assert "Traceback" not in result.output and len(result.output.splitlines()) == 1, result.output
    assert not (tmp_path / "out.csv").exists()
