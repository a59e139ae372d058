"""Extension objects, created once here and bound to an app in create_app."""

from typing import TYPE_CHECKING

from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base for the project's tables."""


db = SQLAlchemy(model_class=Base)
csrf = CSRFProtect()
migrate = Migrate()

if TYPE_CHECKING:
    from flask_sqlalchemy.model import Model as _FlaskModel

    class Model(Base, _FlaskModel):
        """What db.Model is to the type checker: Base with Flask-SQLAlchemy's model mixin."""

else:
    # mypy takes no attribute (db.Model) as a base class; the tables subclass this name instead.
    Model = db.Model
