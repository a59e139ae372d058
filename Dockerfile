# syntax=docker/dockerfile:1
# titanic-web as one self-contained image: the package, a model trained at build time, gunicorn.
#   docker build -t titanic-web .
#   docker run -e SECRET_KEY=... -v titanic-instance:/app/instance -p 8000:8000 titanic-web
# The same commands as `make run` (see the Makefile): `flask --app titanic_web train`, then
# `flask --app titanic_web init-db` and `gunicorn -c gunicorn.conf.py wsgi:app` at start.
# README.md, "Deploying with Docker", says what to pass and what to keep on a volume.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The server runs as this user, never as root. Numeric, so orchestrators can check it is not root.
RUN groupadd --system --gid 10001 titanic \
    && useradd --system --uid 10001 --gid titanic --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin titanic

WORKDIR /app
# Editable, as `make` installs it: templates/, static/, migrations/ and model/ sit beside the
# package (titanic_web/config.py finds them there), not inside it.
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip pip install -e .

# Train now, as root, so the image carries its model and the server cannot change it. The
# throwaway key is for this step alone: training signs nothing, and without a key the app
# factory would write a generated one into instance/, and so into the image. instance/ is
# then made anew, empty and owned by the server's user: SQLite, the spool and batch files go there.
RUN SECRET_KEY=unused-while-training flask --app titanic_web train \
    && rm -rf instance \
    && install -d -o 10001 -g 10001 instance

# Production mode: the app refuses to start without SECRET_KEY, which is never baked into the
# image. Pass it at run time: docker run -e SECRET_KEY=... (all workers and replicas share it).
# HOST 0.0.0.0 so the published port reaches gunicorn from outside the container.
ENV APP_ENV=production \
    HOST=0.0.0.0 \
    PORT=8000

USER 10001:10001
EXPOSE 8000

# Liveness through the app itself; slim images have no curl, so Python asks.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/api/health', timeout=4)"]

# Upgrade the schema, then exec gunicorn so it is PID 1 and gets `docker stop`'s SIGTERM: each
# worker then drains its spool to the database (give it time: docker stop -t 30).
CMD ["sh", "-c", "flask --app titanic_web init-db && exec gunicorn -c gunicorn.conf.py wsgi:app"]
