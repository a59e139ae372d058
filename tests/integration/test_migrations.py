"""The committed migrations are the schema: upgrading an empty database gives exactly the models."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect

from tests.conftest import build_app, close_app
from titanic_web.extensions import db


def test_upgrade_of_an_empty_database_matches_the_models(model_dir: Path, tmp_path: Path) -> None:
    app = build_app(model_dir, tmp_path / "empty.db", tables=False)
    try:
        with app.app_context():
            assert inspect(db.engine).get_table_names() == []
            upgrade()
            with db.engine.connect() as connection:
                context = MigrationContext.configure(connection, opts={"compare_type": True})
                differences = compare_metadata(context, db.metadata)
            assert differences == []
            assert {"predictions", "feature_store", "alembic_version"} <= set(inspect(db.engine).get_table_names())
    finally:
        close_app(app)


def test_downgrade_to_base_removes_the_tables_and_upgrade_restores_them(model_dir: Path, tmp_path: Path) -> None:
    app = build_app(model_dir, tmp_path / "roundtrip.db")
    try:
        with app.app_context():
            downgrade(revision="base")
            assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
            upgrade()
            assert {"predictions", "feature_store"} <= set(inspect(db.engine).get_table_names())
    finally:
        close_app(app)
