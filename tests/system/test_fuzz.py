"""Fuzzing the API from its own OpenAPI document (schemathesis) against a real gunicorn.

Every operation of the document is run twice: with requests it calls valid (the
positive run: each is answered 2xx) and with requests it calls invalid (the negative
run: each is answered 4xx). Every answer of both runs is checked against the
document: no 5xx, a documented status, content type, headers and body schema. The
negative run must store nothing: the tables are counted before and after it, once
the write-behind recorder has delivered everything answered so far.

The server runs as production does, with API keys and an admin key set, so the
documented 401 and 403 answers are reachable too. Repeatable: a fixed seed,
derandomized generation and no example database, so every run tries the same
cases (the README gives the count).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import PASSENGER
from tests.system.server import GunicornServer, init_db, server_env
from titanic_web import __version__, registry
from titanic_web.api.spec import build_spec
from titanic_web.config import PROJECT_ROOT

pytestmark = pytest.mark.system

SEED = 20240415
#: Cases per operation in the fuzzing phase (the examples and coverage phases add their own).
MAX_EXAMPLES = 100
#: MAX_ROWS of the fuzzed server: small, so the boundary (maxItems) is fuzzed too, cheaply.
MAX_ROWS = 5
ROW_WAIT = 15.0  # seconds for the recorder to deliver what was answered
TIMEOUT = 30  # seconds for any one request the tests make themselves
#: Predictions made for the positive run's outcomes to name (it uses about 190).
OUTCOME_IDS = 600
API_KEY = "fuzz-user-key-0123456789abcdef"
ADMIN_KEY = "fuzz-admin-key-0123456789abcdef"

#: The document the server serves (with MAX_ROWS as set here); a test below checks they are equal.
DOCUMENT = build_spec(max_rows=MAX_ROWS, version=__version__)


def _without_input() -> list[str]:
    """operationIds of the operations that take no body and no parameters: nothing of theirs can be invalid."""
    return [
        operation["operationId"]
        for item in DOCUMENT["paths"].values()
        for operation in item.values()
        if "requestBody" not in operation and not operation.get("parameters")
    ]


def _config(mode: str) -> schemathesis.Config:
    """One run's settings: seeded and derandomized; every check, with statuses as strict as the API."""
    operations: list[dict[str, Any]] = []
    if mode == "negative":
        # Nothing to make invalid but the method: the coverage phase sends the undocumented ones.
        operations.append({"include-operation-id": _without_input(), "phases": {"fuzzing": {"enabled": False}}})
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"mode": mode, "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            "phases": {
                # The document's examples are valid requests: they belong to the positive run. No phase
                # takes values from earlier answers (fresh uuids each run): every run sends the same cases.
                "examples": {"enabled": mode == "positive", "extra-data-sources": {"responses": False}},
                "coverage": {"enabled": True, "extra-data-sources": {"responses": False}},
                "fuzzing": {
                    "enabled": True,
                    "extra-data-sources": {"responses": False},
                    "error-feedback": {"enabled": False},
                },
                # The document declares no links between operations: there is no sequence to explore.
                "stateful": {"enabled": False},
            },
            "checks": {
                # Valid input is answered, invalid input refused (400, 413, 415, 422): nothing in between.
                "positive_data_acceptance": {"expected-statuses": ["2XX"]},
                "negative_data_rejection": {"expected-statuses": ["4XX"]},
            },
            # The admin key opens every operation; requests without it (the ignored_auth check) must get 401.
            "auth": {"openapi": {"bearerAuth": {"bearer": ADMIN_KEY}}},
            "operations": operations,
        }
    )


positive = schemathesis.openapi.from_dict(DOCUMENT, config=_config("positive"))
negative = schemathesis.openapi.from_dict(DOCUMENT, config=_config("negative"))


# -- the server ------------------------------------------------------------------------------------


@dataclass
class Site:
    """The fuzzed server, the SQLite file it records into, its model version, and what the runs sent."""

    server: GunicornServer
    db_path: Path
    version: str
    sent: dict[str, int] = field(default_factory=dict)
    digest: Any = field(default_factory=hashlib.sha256)

    def record(self, mode: str, case: Any) -> None:
        """Count a case sent, and add it to the run's digest (equal digests: the same cases)."""
        self.count(mode)
        self.count(f"{mode} {case.operation.label}")
        sent = [mode, case.method, case.path, case.query, case.media_type, case.body]
        self.digest.update(json.dumps(sent, sort_keys=True, default=lambda value: type(value).__name__).encode())

    def count(self, name: str, amount: int = 1) -> None:
        """Add to one of the run's tallies."""
        self.sent[name] = self.sent.get(name, 0) + amount

    def rows(self) -> tuple[int, int, int]:
        """(predictions, feature_store, outcomes) rows in the database now."""
        with closing(sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)) as conn:
            conn.execute("BEGIN")  # every count from one moment
            predictions, features, outcomes = (
                int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
                for table in ("predictions", "feature_store", "outcomes")
            )
            conn.rollback()
        return predictions, features, outcomes

    def settled_rows(self) -> tuple[int, int, int]:
        """:meth:`rows` once the writer has delivered every answer given so far (one worker,
        so its backlog in /api/ready is the whole spool)."""
        deadline = time.monotonic() + ROW_WAIT
        while True:
            backlog = requests.get(f"{self.server.base_url}/api/ready", timeout=TIMEOUT).json()["backlog"]["rows"]
            if backlog == 0:
                return self.rows()
            assert time.monotonic() < deadline, f"{backlog} answered rows still spooled after {ROW_WAIT} s"
            time.sleep(0.05)

    def predict(self, count: int) -> list[str]:
        """Predict `count` passengers; return the predictions' ids."""
        response = requests.post(
            f"{self.server.base_url}/api/predict",
            json=[PASSENGER] * count,
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=TIMEOUT,
        )
        assert response.status_code == 200, response.text[:1000]
        return [p["id"] for p in response.json()["predictions"]]


@pytest.fixture(scope="module")
def site(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """gunicorn with one worker on a fresh SQLite file, a registry of one version, API keys set,
    and a rate limit far above what the runs send."""
    folder = tmp_path_factory.mktemp("fuzz")
    db_path = folder / "titanic.db"
    # The trained model as the one version of a registry, so activating it is possible.
    version = str(json.loads((model_dir / "model.json").read_text())["version"])
    models = folder / "registry"
    shutil.copytree(model_dir, models / version)
    registry.write_active(models, version)
    env = server_env(
        DATABASE_URL=f"sqlite:///{db_path}",
        MODEL_DIR=str(models),
        SPOOL_DIR=str(folder / "spool"),
        BATCH_DIR=str(folder / "batches"),
        SECRET_KEY="fuzz-test-secret-key",
        MAX_ROWS=str(MAX_ROWS),
        RATE_LIMIT="1000000/minute",
        API_KEYS=API_KEY,
        ADMIN_API_KEYS=ADMIN_KEY,
    )
    init_db(PROJECT_ROOT, env)
    with GunicornServer(PROJECT_ROOT, env, folder / "gunicorn.log", workers=1) as server:
        site = Site(server, db_path, version)
        yield site
    # The README's figures, from a run of this module in one process (-rP shows them); make test
    # shares the cases between its processes, each with a server of its own.
    print("cases sent:", site.sent, "digest:", site.digest.hexdigest())


@pytest.fixture(scope="module")
def stored_ids(site: Site) -> list[str]:
    """Ids of predictions already in the database, each for one outcome of the positive run."""
    ids = [prediction_id for _ in range(OUTCOME_IDS // MAX_ROWS) for prediction_id in site.predict(MAX_ROWS)]
    site.settled_rows()  # an outcome can name a prediction only once it is stored
    return ids


@pytest.fixture(scope="module")
def rows_before_negative(site: Site) -> Iterator[tuple[int, int, int]]:
    """The tables' rows when the negative run starts, every earlier answer delivered; and once the
    invalid requests this process sent are done, that they stored nothing.

    Checked here, at the end of the module, rather than by a last test: pytest-xdist may give the
    invalid cases to both test processes, each with a server of its own, or the last test alone
    to a process that sent none of them.
    """
    predictions, features, outcomes = site.settled_rows()
    yield predictions, features, outcomes
    predicted = site.sent.get("predicted in the negative run", 0)
    assert site.settled_rows() == (predictions + predicted, features + predicted, outcomes), site.sent


def _predictions_answered(response: Any) -> int:
    """How many predictions a 2xx JSON answer gave (each one is stored), else 0."""
    if not 200 <= response.status_code < 300:
        return 0
    try:
        body = response.json()
    except ValueError:  # not JSON (a CSV submission has no ids; the run sends none)
        return 0
    return len(body["predictions"]) if isinstance(body, dict) and "predictions" in body else 0


# -- the runs --------------------------------------------------------------------------------------


def test_the_fuzzed_document_is_the_served_one(site: Site) -> None:
    response = requests.get(f"{site.server.base_url}/api/openapi.json", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json() == DOCUMENT


@positive.parametrize()
def test_valid_requests_are_answered_as_documented(case: Any, site: Site, stored_ids: list[str]) -> None:
    site.record("positive", case)
    excluded = []
    if (case.method, case.path) == ("POST", "/api/outcomes"):
        # Any uuid is a valid id, but only a stored prediction's is answered 200 (else 422), and only
        # once with each outcome (else 409): each outcome names a prediction of its own.
        for item in case.body if isinstance(case.body, list) else [case.body]:
            assert stored_ids, f"the positive run needs more than OUTCOME_IDS ({OUTCOME_IDS}) predictions"
            item["id"] = stored_ids.pop()
            site.count("outcome ids used")
    elif (case.method, case.path) == ("POST", "/api/model/activate"):
        case.body["version"] = site.version  # any text is a valid name; only a registered one is answered 200
    elif case.media_type == "text/csv":
        # The document can say only "text" of a CSV file: most texts generated are not one, and are answered
        # 400 or 422 (as documented, which is checked). The examples phase sends a valid file.
        excluded.append(positive_data_acceptance)
    response = case.call_and_validate(base_url=site.server.base_url, excluded_checks=excluded)
    if not excluded:
        assert 200 <= response.status_code < 300, (
            f"{case.method} {case.path}: {response.status_code} {response.text[:500]}"
        )


@negative.parametrize()
def test_invalid_requests_are_refused_as_documented(
    case: Any, site: Site, rows_before_negative: tuple[int, int, int]
) -> None:
    # negative_data_rejection fails every invalid request answered other than 4xx. It lets through those
    # whose only fault is a query parameter the document does not name (ignored, but on /api/predict), those whose
    # mutation is lost in sending (an invalid value sent as a valid one) and the undocumented methods
    # (OPTIONS answers 200): what they predicted, if anything, is counted, since it is stored.
    site.record("negative", case)
    response = case.call(base_url=site.server.base_url)
    site.count("predicted in the negative run", _predictions_answered(response))  # counted even if it fails below
    case.validate_response(response, transport_kwargs={"base_url": site.server.base_url})
