# titanic-web: `make run` serves, `make test` tests; both set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The model registry's active pointer (titanic_web/registry.py): `make run` trains only when no version is active.
MODEL := $(or $(MODEL_DIR),model/registry)/ACTIVE
FLASK := $(BIN)/flask --app titanic_web
HOST ?= 127.0.0.1
PORT ?= 8000
export HOST PORT

.PHONY: run test install model db browser screenshots clean help

help:
	@echo "make run    set up, train if needed, create the database, serve on http://$(HOST):$(PORT)"
	@echo "make test   set up, run make lint, then the whole test suite (installs Debian's chromium for tests/browser/)"
	@echo "make browser  install Debian's chromium when /usr/bin/chromium is missing (make test does it)"
	@echo "make screenshots  retake the README's pictures in docs/screenshots/ (the browser tests that take them)"
	@echo "make model  train a new model version and make it active (also: $(FLASK) train; versions: $(FLASK) model list)"
	@echo "make bench  benchmarks: predictor, HTTP, 100,000-row CSV, writer (installs wrk; figures in bench/README.md)"
	@echo "make bench-quick  the same with fewer rounds (about 3 minutes)"
	@echo "make bench-instructions  instructions per request in a worker, counted by valgrind (installs it)"
	@echo "make lint   ruff (lint and format check) and mypy; changes no file"
	@echo "make clean  remove .venv, .venv-prod, the trained models (model/registry, model/artifacts), instance/ and .pytest_cache"

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, this is " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# LOG_LEVEL=ERROR: the app behind the command says, as a warning, that no model is loaded yet,
# which is what training is about to change (its progress is printed, not logged).
$(MODEL): | $(STAMP)
	LOG_LEVEL=ERROR $(FLASK) train

model: $(STAMP)
	LOG_LEVEL=ERROR $(FLASK) train

db: $(STAMP)
	$(FLASK) init-db

run: $(STAMP) $(MODEL) db
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

# `lint` comes before the model and the browser: a ruff or mypy finding fails `make test`
# (and so .ci/run and CI) before anything is trained or installed.
# The suite runs in TEST_WORKERS processes (pytest-xdist, each test given to whichever is free):
# much of it waits on gunicorn, PostgreSQL and Chromium, so one process keeps about one core
# busy. TEST_WORKERS=0 runs it in make's own pytest process (for -x, or a debugger's --pdb).
TEST_WORKERS ?= 2
test: $(STAMP) lint $(MODEL) browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# Checks only: nothing is rewritten (`$(BIN)/ruff format` and `$(BIN)/ruff check --fix` do that).
# Settings in pyproject.toml; the tools are pinned in setup.cfg's test extra. All three run
# even when one fails, so one run shows every finding; the target fails if any did.
.PHONY: lint
lint: $(STAMP)
	@status=0; \
	$(BIN)/ruff check titanic_web tests || status=1; \
	$(BIN)/ruff format --check titanic_web tests || status=1; \
	$(BIN)/mypy titanic_web || status=1; \
	exit $$status

# The browser tests (tests/browser/) drive Debian's chromium through Playwright, never a
# browser Playwright downloads (no `playwright install`).
browser:
	@test -x /usr/bin/chromium || DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }

# The README's pictures: the browser tests that take screenshots, writing them into
# docs/screenshots/ (make test writes them into temporary folders, and changes no file).
screenshots: $(STAMP) $(MODEL) browser
	UPDATE_SCREENSHOTS=1 $(BIN)/python -m pytest -q tests/browser \
		-k "test_screenshots_of_form_and_result or test_screenshot_of_a_finished_batch or test_dashboard_draws_every_chart_and_flags_the_drift"

# Benchmarks (bench/README.md): the predictor in-process, /api/predict over HTTP, a
# 100,000-passenger CSV upload and the recorder's writer on SQLite; installs wrk from Debian
# when missing. Each script takes its own arguments: PREDICTOR_ARGS (bench_predictor.py),
# BENCH_ARGS (run_http.py), BATCH_ARGS (bench_batch.py), WRITER_ARGS (bench_writer.py),
# e.g. `make bench BENCH_ARGS="--rounds 1 --duration 5"`.
# `make bench-quick` is a three-minute look with fewer rounds.
# The servers the benchmarks start run from $(PROD_VENV): the package as the production image
# installs it (`pip install -e .`, no test extras, whose optional libraries other libraries
# import when present and which would swell every worker's memory).
PROD_VENV := .venv-prod
PROD_STAMP := $(PROD_VENV)/.installed

$(PROD_STAMP): setup.cfg pyproject.toml
	test -x $(PROD_VENV)/bin/python || $(PYTHON) -m venv $(PROD_VENV)
	$(PROD_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PROD_VENV)/bin/python -m pip install --quiet -e .
	touch $(PROD_STAMP)

.PHONY: bench bench-quick bench-instructions
bench: $(STAMP) $(PROD_STAMP) $(MODEL)
	@command -v wrk >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y wrk \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y wrk; }
	$(BIN)/python bench/bench_predictor.py $(PREDICTOR_ARGS)
	BENCH_SERVER_VENV=$(PROD_VENV) $(BIN)/python bench/run_http.py $(BENCH_ARGS)
	BENCH_SERVER_VENV=$(PROD_VENV) $(BIN)/python bench/bench_batch.py $(BATCH_ARGS)
	$(BIN)/python bench/bench_writer.py $(WRITER_ARGS)

bench-quick:
	$(MAKE) bench PREDICTOR_ARGS="--rounds 2" BENCH_ARGS="--rounds 3 --duration 2" \
		BATCH_ARGS="--requests 2" WRITER_ARGS="--rounds 1 --batches 5"

# Instructions a gunicorn worker executes per one-passenger request, counted by valgrind:
# figures the shared machine's noise cannot move (bench/count_instructions.py, 2-6 minutes).
bench-instructions: $(STAMP) $(PROD_STAMP) $(MODEL)
	@command -v valgrind >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y valgrind \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y valgrind; }
	BENCH_SERVER_VENV=$(PROD_VENV) $(BIN)/python bench/count_instructions.py $(COUNT_ARGS)

clean:
	rm -rf $(VENV) $(PROD_VENV) model/artifacts model/registry instance .pytest_cache
