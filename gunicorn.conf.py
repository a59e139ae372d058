"""gunicorn settings: `gunicorn -c gunicorn.conf.py wsgi:app` (what `make run` does)."""

import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "sync"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = 30
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# Each worker loads the model itself: nothing is shared through fork.
preload_app = False
# gunicorn's control socket is one fixed path per user: two servers on one
# machine (or a server and the system tests) would replace each other's. Unused here.
control_socket_disable = True
