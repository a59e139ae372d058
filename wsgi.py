"""The WSGI entry point: `gunicorn wsgi:app`."""

from titanic_web import create_app

app = create_app()
