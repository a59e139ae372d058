"""System tests: the real app under a real gunicorn with two workers, over HTTP on 127.0.0.1.

One server (module scope) answers the form, the JSON and CSV API; the tests then read
its SQLite file directly. A second, separate server runs without SECRET_KEY to show
that the workers generate one key together and all accept each other's forms.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import PASSENGER, TEST_CSV, csrf_token
from tests.system.server import GunicornServer, init_db, server_env
from titanic_web import spool
from titanic_web.config import PROJECT_ROOT

pytestmark = pytest.mark.system

TIMEOUT = 30  # seconds for any one HTTP request
ROW_WAIT = 10.0  # seconds for answered predictions to reach the tables

#: The form as a browser sends it: text everywhere, empty meaning "unknown".
FORM = {
    "PassengerId": "",
    "Pclass": "1",
    "Sex": "female",
    "Name": "Doe, Mrs. Jane",
    "Age": "29",
    "SibSp": "0",
    "Parch": "0",
    "Ticket": "",
    "Fare": "100",
    "Cabin": "",
    "Embarked": "C",
}
#: The same passenger as the JSON API takes it (omitted fields take the same defaults).
FORM_AS_JSON = {
    "Pclass": 1,
    "Sex": "female",
    "Name": "Doe, Mrs. Jane",
    "Age": 29,
    "SibSp": 0,
    "Parch": 0,
    "Fare": 100,
    "Embarked": "C",
}

PROBABILITY = re.compile(r'<span id="probability">(\d+(?:\.\d+)?)%</span>')
VERDICT = re.compile(r'<p class="verdict">(Likely survived|Likely did not survive)</p>')
PREDICTION_ID = re.compile(r"prediction <code>([0-9a-fA-F-]{36})</code>")


# -- test data -------------------------------------------------------------------------------


def csv_head(count: int) -> str:
    """The header and the first `count` passengers of the competition's test.csv."""
    lines = TEST_CSV.read_text().splitlines()
    return "\n".join(lines[: count + 1]) + "\n"


def csv_passengers(count: int) -> list[dict[str, Any]]:
    """The first `count` passengers of test.csv as JSON objects, with JSON types."""
    ints, floats = {"PassengerId", "Pclass", "SibSp", "Parch"}, {"Age", "Fare"}
    out = []
    for row in csv.DictReader(io.StringIO(csv_head(count))):
        passenger: dict[str, Any] = {}
        for name, text in row.items():
            if text == "":
                passenger[name] = None if name in {"Age", "Fare", "Cabin", "Embarked"} else ""
            elif name in ints:
                passenger[name] = int(text)
            elif name in floats:
                passenger[name] = float(text)
            else:
                passenger[name] = text
        out.append(passenger)
    return out


# -- the database, read directly ----------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Both tables at one moment, keyed by the prediction id as stored (32 hex digits)."""

    predictions: dict[str, dict[str, Any]]
    features: dict[str, dict[str, Any]]
    joined: int  # rows of predictions JOIN feature_store ON the prediction id

    def new_since(self, before: Snapshot) -> tuple[set[str], set[str]]:
        return set(self.predictions) - set(before.predictions), set(self.features) - set(before.features)


def snapshot(db_path: Path) -> Snapshot:
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)) as conn:
        conn.row_factory = sqlite3.Row
        conn.execute("BEGIN")  # one read transaction: both tables from the same moment
        predictions = {
            row["id"]: dict(row)
            for row in conn.execute(
                "SELECT id, passenger_id, survived, probability, model_version, source FROM predictions"
            )
        }
        features = {
            row["prediction_id"]: {
                **dict(row),
                "raw_input": json.loads(row["raw_input"]),
                "features": json.loads(row["features"]),
            }
            for row in conn.execute("SELECT prediction_id, features, raw_input, model_version FROM feature_store")
        }
        joined = conn.execute(
            "SELECT count(*) FROM predictions JOIN feature_store ON feature_store.prediction_id = predictions.id"
        ).fetchone()[0]
        conn.rollback()
    return Snapshot(predictions, features, joined)


def settled_snapshot(db_path: Path) -> Snapshot:
    """A snapshot once earlier answers have all arrived: the writers deliver in the
    background, so wait until the row counts hold still for a few flush intervals."""
    deadline = time.monotonic() + ROW_WAIT
    snap = snapshot(db_path)
    stable = 0
    while stable < 4 and time.monotonic() < deadline:
        time.sleep(0.25)
        again = snapshot(db_path)
        same = (len(again.predictions), len(again.features)) == (len(snap.predictions), len(snap.features))
        stable = stable + 1 if same else 0
        snap = again
    return snap


def wait_for_rows(db_path: Path, done: Callable[[Snapshot], bool]) -> Snapshot:
    """Poll the tables until done(snapshot) holds; return the last snapshot either way."""
    deadline = time.monotonic() + ROW_WAIT
    snap = snapshot(db_path)
    while not done(snap) and time.monotonic() < deadline:
        time.sleep(0.1)
        snap = snapshot(db_path)
    return snap


def new_rows_after_marker(server: GunicornServer, db_path: Path, before: Snapshot) -> tuple[str, set[str], set[str]]:
    """(marker, new prediction ids, new feature_store ids) since `before`, once whatever was
    answered before this call has been delivered: the answer to check needs no timing.

    A valid request is the marker: once its rows are in, the worker that answered it has
    delivered everything it spooled before (each writer delivers its spool in order). The
    other worker may have answered the request under test, so wait as well for the shared
    spool folder to hold no undelivered row: a line is marked delivered only once committed.
    """
    marker = stored_id(predict_json(server.base_url, PASSENGER)["predictions"][0]["id"])
    snap = wait_for_rows(db_path, lambda snap: marker in snap.predictions and marker in snap.features)
    assert marker in snap.predictions and marker in snap.features, "the marker request was not stored"
    spool_dir = Path(server.env["SPOOL_DIR"])
    deadline = time.monotonic() + ROW_WAIT
    while (waiting := spool.scan(spool_dir))["rows"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert waiting["rows"] == 0, f"spooled rows not delivered: {waiting}"
    new_predictions, new_features = snapshot(db_path).new_since(before)
    return marker, new_predictions, new_features


def stored_id(api_id: str) -> str:
    """How SQLAlchemy's Uuid column stores an id in SQLite: 32 hex digits, no dashes."""
    return uuid.UUID(api_id).hex


# -- HTTP helpers -------------------------------------------------------------------------------


def submit_form(base_url: str, form: dict[str, str] = FORM) -> tuple[float, str, str]:
    """GET the form, POST it back with its CSRF token; return (percent shown, prediction id, page)."""
    with requests.Session() as browser:
        page = browser.get(f"{base_url}/", timeout=TIMEOUT)
        assert page.status_code == 200, page.text[:500]
        assert page.headers["Content-Type"].startswith("text/html")
        answer = browser.post(f"{base_url}/", data={**form, "csrf_token": csrf_token(page.text)}, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text[:2000]
    shown = PROBABILITY.search(answer.text)
    assert shown, f"no probability on the result page:\n{answer.text[:2000]}"
    prediction = PREDICTION_ID.search(answer.text)
    assert prediction, f"no prediction id on the result page:\n{answer.text[:2000]}"
    return float(shown.group(1)), prediction.group(1), answer.text


def predict_json(base_url: str, body: Any) -> dict[str, Any]:
    response = requests.post(f"{base_url}/api/predict", json=body, timeout=TIMEOUT)
    assert response.status_code == 200, response.text[:2000]
    assert response.headers["Content-Type"].startswith("application/json")
    result: dict[str, Any] = response.json()
    return result


def predict_csv(base_url: str, body: str) -> requests.Response:
    response = requests.post(
        f"{base_url}/api/predict",
        data=body.encode(),
        headers={"Content-Type": "text/csv", "Accept": "text/csv"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200, response.text[:2000]
    return response


def model_card(base_url: str) -> dict[str, Any]:
    response = requests.get(f"{base_url}/api/model", timeout=TIMEOUT)
    assert response.status_code == 200, response.text[:2000]
    card: dict[str, Any] = response.json()
    return card


def wait_for_access_lines(server: GunicornServer, start: int, count: int) -> list[dict[str, str]]:
    """The access log lines after the first `start`, once there are `count` of them (or 5 s passed).

    gunicorn writes the line after sending the response, so the client can be a little ahead.
    """
    deadline = time.monotonic() + 5
    lines = server.access_log()[start:]
    while len(lines) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        lines = server.access_log()[start:]
    return lines


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def system_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("system")


@pytest.fixture(scope="module")
def db_path(system_dir: Path) -> Path:
    return system_dir / "titanic.db"


@pytest.fixture(scope="module")
def server(model_dir: Path, system_dir: Path, db_path: Path) -> Iterator[GunicornServer]:
    """gunicorn -c gunicorn.conf.py -w 2 wsgi:app from the checkout, on a fresh SQLite file."""
    env = server_env(
        DATABASE_URL=f"sqlite:///{db_path}",
        MODEL_DIR=str(model_dir),
        SPOOL_DIR=str(system_dir / "spool"),
        SECRET_KEY="system-test-secret-key",
    )
    init_db(PROJECT_ROOT, env)
    assert db_path.exists(), "flask init-db did not create the SQLite file"
    with GunicornServer(PROJECT_ROOT, env, system_dir / "gunicorn.log") as running:
        yield running


# -- (1) the form -------------------------------------------------------------------------------


def test_form_shows_the_probability(server: GunicornServer) -> None:
    percent, prediction_id, page = submit_form(server.base_url)
    assert 0.0 <= percent <= 100.0
    assert uuid.UUID(prediction_id).version == 7  # time-ordered (titanic_web/ids.py)
    verdict = VERDICT.search(page)
    assert verdict, f"no verdict on the result page:\n{page[:2000]}"
    # The form kept the values it was given.
    assert re.search(r'name="Age"[^>]*value="29"', page), "the Age field lost its value"

    # The same passenger through the API gets the same probability (to the page's 0.1 %).
    api = predict_json(server.base_url, FORM_AS_JSON)["predictions"][0]
    assert abs(api["probability"] * 100 - percent) <= 0.05 + 1e-9, (api, percent)
    assert verdict.group(1) == ("Likely survived" if api["survived"] else "Likely did not survive"), (verdict, api)


def test_form_without_csrf_token_is_refused(server: GunicornServer, db_path: Path) -> None:
    before = settled_snapshot(db_path)
    response = requests.post(f"{server.base_url}/", data=FORM, timeout=TIMEOUT)
    assert response.status_code == 400, response.text[:1000]
    assert response.headers["Content-Type"].startswith("text/html")
    assert not PROBABILITY.search(response.text), "predicted without a CSRF token"
    marker, new_predictions, new_features = new_rows_after_marker(server, db_path, before)
    assert (new_predictions, new_features) == ({marker}, {marker}), "the refused form stored rows"


# -- (2) the JSON and CSV API -------------------------------------------------------------------


def test_api_predicts_one_many_and_csv(server: GunicornServer) -> None:
    card = model_card(server.base_url)
    version, threshold = card["version"], float(card.get("threshold", 0.5))

    def check(prediction: dict[str, Any]) -> None:
        assert list(prediction) == ["id", "PassengerId", "survived", "probability"]
        assert uuid.UUID(prediction["id"]).version == 7  # time-ordered (titanic_web/ids.py)
        assert prediction["survived"] in (0, 1)
        assert 0.0 <= prediction["probability"] <= 1.0
        if abs(prediction["probability"] - threshold) > 1e-4:  # the answer is rounded to 4 places
            assert prediction["survived"] == int(prediction["probability"] >= threshold), prediction

    one = predict_json(server.base_url, PASSENGER)
    assert one["model_version"] == version
    assert len(one["predictions"]) == 1
    check(one["predictions"][0])
    assert one["predictions"][0]["PassengerId"] == 892

    five = csv_passengers(5)
    many = predict_json(server.base_url, five)
    assert many["model_version"] == version
    assert [p["PassengerId"] for p in many["predictions"]] == [p["PassengerId"] for p in five]
    for prediction in many["predictions"]:
        check(prediction)
    ids = [p["id"] for p in one["predictions"] + many["predictions"]]
    assert len(set(ids)) == len(ids), "prediction ids repeat"
    # Passenger 892 is in both requests: same model, same answer, whichever worker served.
    assert many["predictions"][0]["probability"] == one["predictions"][0]["probability"]

    response = predict_csv(server.base_url, csv_head(10))
    assert response.headers["Content-Type"].startswith("text/csv")
    assert response.headers["X-Model-Version"] == version
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["PassengerId", "Survived"]
    assert [int(r[0]) for r in rows[1:]] == list(range(892, 902))
    assert all(r[1] in ("0", "1") for r in rows[1:])
    # The submission agrees with the JSON answers for the passengers both saw.
    assert [int(r[1]) for r in rows[1:6]] == [p["survived"] for p in many["predictions"]]


# -- (3) what reached the database ------------------------------------------------------------------


def test_predictions_and_features_are_stored_once(server: GunicornServer, db_path: Path) -> None:
    before = settled_snapshot(db_path)

    percent, form_id, _ = submit_form(server.base_url)
    one = predict_json(server.base_url, PASSENGER)["predictions"]
    many = predict_json(server.base_url, csv_passengers(5))["predictions"]
    predict_csv(server.base_url, csv_head(10))  # a submission carries no ids: found by PassengerId
    api_answers = {stored_id(p["id"]): p for p in one + many}
    form_key = stored_id(form_id)
    expected_count = 1 + len(api_answers) + 10

    def all_arrived(snap: Snapshot) -> bool:
        new_predictions, new_features = snap.new_since(before)
        return len(new_predictions) >= expected_count and len(new_features) >= expected_count

    after = wait_for_rows(db_path, all_arrived)
    time.sleep(0.5)  # anything extra (a duplicate write) would show up now
    after = snapshot(db_path)
    new_predictions, new_features = after.new_since(before)

    # Exactly one row per answered passenger in each table, and the same ids in both.
    assert len(new_predictions) == expected_count, (len(new_predictions), expected_count)
    assert len(new_features) == expected_count, (len(new_features), expected_count)
    assert new_predictions == new_features
    assert len(after.predictions) == len(before.predictions) + expected_count
    assert len(after.features) == len(before.features) + expected_count
    assert after.joined == len(after.predictions) == len(after.features), "rows that do not join"
    assert set(before.predictions) <= set(after.predictions), "earlier rows vanished"

    # The form's row.
    assert form_key in new_predictions
    form_row = after.predictions[form_key]
    assert form_row["source"] == "form"
    assert f"{form_row['probability'] * 100:.1f}" == f"{percent:.1f}"
    assert after.features[form_key]["raw_input"]["Age"] == 29
    assert after.features[form_key]["raw_input"]["Sex"] == "female"

    # The JSON answers' rows, by the ids the API returned.
    assert set(api_answers) <= new_predictions
    for key, answer in api_answers.items():
        row = after.predictions[key]
        assert row["source"] == "api"
        assert row["passenger_id"] == answer["PassengerId"]
        assert row["survived"] == answer["survived"]
        assert round(row["probability"], 4) == answer["probability"]
        assert after.features[key]["raw_input"]["PassengerId"] == answer["PassengerId"]

    # The CSV upload's rows: the rest, passengers 892-901 in any order.
    csv_keys = new_predictions - set(api_answers) - {form_key}
    assert sorted(after.predictions[k]["passenger_id"] for k in csv_keys) == list(range(892, 902))
    assert {after.predictions[k]["source"] for k in csv_keys} == {"api"}

    # Both tables record the same model version, the one the server reports.
    version = model_card(server.base_url)["version"]
    for key in new_predictions:
        assert after.predictions[key]["model_version"] == version
        assert after.features[key]["model_version"] == version
        assert after.features[key]["features"], "no engineered features stored"


# -- (4) invalid input --------------------------------------------------------------------------

#: (Content-Type, body, the errors expected as (index, field, CSV line or None)).
INVALID_REQUESTS = {
    "one-passenger-bad-age": ("application/json", json.dumps({**PASSENGER, "Age": -1}), [(0, "Age", None)]),
    "one-passenger-unknown-field": ("application/json", json.dumps({**PASSENGER, "Agee": 3}), [(0, "Agee", None)]),
    "one-passenger-no-pclass": ("application/json", json.dumps({"Sex": "male"}), [(0, "Pclass", None)]),
    "one-passenger-pclass-text": (  # must be a 422, never a 500
        "application/json",
        json.dumps({**PASSENGER, "Pclass": "first"}),
        [(0, "Pclass", None)],
    ),
    "array-one-bad-among-good": (
        "application/json",
        json.dumps([PASSENGER, {**PASSENGER, "Agee": 3}, PASSENGER]),
        [(1, "Agee", None)],
    ),
    "csv-bad-pclass": ("text/csv", csv_head(3).replace("\n893,3,", "\n893,7,", 1), [(1, "Pclass", 3)]),
}


@pytest.mark.parametrize("content_type, body, expected", INVALID_REQUESTS.values(), ids=INVALID_REQUESTS.keys())
def test_invalid_request_answers_422_json_and_stores_nothing(
    server: GunicornServer,
    db_path: Path,
    content_type: str,
    body: str,
    expected: list[tuple[Any, ...]],
) -> None:
    before = settled_snapshot(db_path)
    response = requests.post(
        f"{server.base_url}/api/predict",
        data=body.encode(),
        headers={"Content-Type": content_type, "Accept": "application/json"},
        timeout=TIMEOUT,
    )
    # A valid request afterwards is the marker: once it is in, the refused one had its chance to write.
    marker, new_predictions, new_features = new_rows_after_marker(server, db_path, before)
    stored = (
        f"rows stored by the refused request: {len(new_predictions - {marker})} predictions, "
        f"{len(new_features - {marker})} feature_store"
    )

    assert response.status_code == 422, f"{response.status_code} {response.text[:1000]}\n{stored}"
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    answer = response.json()
    assert answer["code"] == 422
    assert [(e["index"], e["field"], e.get("line")) for e in answer["errors"]] == expected
    for error in answer["errors"]:
        assert error["message"], error
        if error["field"] == "Agee":  # an unknown field is named
            assert "'Agee'" in error["message"], error
    assert (new_predictions, new_features) == ({marker}, {marker}), stored


def raw_request(server: GunicornServer, head: bytes, body: bytes) -> tuple[int, bytes]:
    """Send a request's head and body over a socket, close our side, and read the answer:
    the status and the body (the server closes the connection after it)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as conn:
        conn.sendall(head + body)
        conn.shutdown(socket.SHUT_WR)  # the client sent all it will: the server reads an end of stream
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


#: A header and 200 passengers of test.csv: whole lines that a server which took them for the
#: whole file would predict and store.
HALF_A_CSV = csv_head(200).encode()


@pytest.mark.parametrize(
    "head, body, expected",
    [
        (
            b"POST /api/predict HTTP/1.1\r\nHost: test\r\nContent-Type: text/csv\r\n"
            + f"Content-Length: {2 * len(HALF_A_CSV)}\r\n\r\n".encode(),
            HALF_A_CSV,
            "ended before the",
        ),
        (
            b"POST /api/predict HTTP/1.1\r\nHost: test\r\nContent-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n",
            f"{len(HALF_A_CSV):x}\r\n".encode() + HALF_A_CSV + b"\r\nzz\r\n0\r\n\r\n",
            "chunked encoding cannot be read",
        ),
        (
            b"POST /api/predict HTTP/1.1\r\nHost: test\r\nContent-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n",
            f"{len(HALF_A_CSV):x}\r\n".encode() + HALF_A_CSV + b"\r\n",
            "ended before its last chunk",
        ),
    ],
    ids=["announced-longer", "malformed-chunk", "chunks-cut-short"],
)
def test_a_body_cut_short_or_malformed_is_400_json_and_stores_nothing(
    server: GunicornServer, db_path: Path, head: bytes, body: bytes, expected: str
) -> None:
    before = settled_snapshot(db_path)
    status, answer = raw_request(server, head, body)
    marker, new_predictions, new_features = new_rows_after_marker(server, db_path, before)

    assert status == 400, answer[:500]
    message = json.loads(answer)["message"]
    assert expected in message and "nothing was stored" in message, message
    assert (new_predictions, new_features) == ({marker}, {marker}), f"{len(new_predictions) - 1} rows stored"


# -- (5) both workers serve ---------------------------------------------------------------------


def test_both_workers_serve(server: GunicornServer) -> None:
    workers = server.worker_pids()
    assert len(workers) == 2, f"expected 2 gunicorn workers, the master has children {workers}"

    start = len(server.access_log())
    sent, answers, served_by = 0, set(), set()
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(10):  # rounds of concurrent requests until both workers answered some
            responses = list(
                pool.map(
                    lambda _: requests.post(f"{server.base_url}/api/predict", json=PASSENGER, timeout=TIMEOUT),
                    range(24),
                )
            )
            sent += len(responses)
            for response in responses:
                assert response.status_code == 200, response.text[:2000]
                answers.add(response.json()["predictions"][0]["probability"])
            lines = wait_for_access_lines(server, start, sent)
            served_by = {int(line["pid"]) for line in lines if line["path"] == "/api/predict"}
            if served_by >= workers:
                break

    assert len(answers) == 1, f"the workers disagree about the same passenger: {answers}"
    lines = wait_for_access_lines(server, start, sent)
    predict_lines = [line for line in lines if line["method"] == "POST" and line["path"] == "/api/predict"]
    assert len(predict_lines) == sent, f"{sent} requests, {len(predict_lines)} in the access log"
    assert {line["status"] for line in predict_lines} == {"200"}
    assert served_by == workers, f"requests were served by {served_by}, the workers are {workers}"
    assert server.worker_pids() == workers, "a worker was replaced (crashed or timed out) during the test"


# -- a generated SECRET_KEY is shared by the workers ------------------------------------------------


def _copy_app(dest: Path) -> Path:
    """The app's code as it is in the checkout, in a folder of its own (so a fresh instance/)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("titanic_web", "templates", "static", "migrations"):
        shutil.copytree(PROJECT_ROOT / folder, dest / folder, ignore=ignore)
    for name in ("wsgi.py", "gunicorn.conf.py"):
        shutil.copy2(PROJECT_ROOT / name, dest / name)
    return dest


def _fingerprint(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def test_workers_share_a_generated_secret_key(model_dir: Path, tmp_path: Path) -> None:
    """No SECRET_KEY: the two workers race to create instance/secret_key and must agree.

    Flask puts instance/ beside the package it imports, so the server runs from a copy
    of the code: its instance/ starts empty, and the checkout's instance/ is never touched.
    """
    project = _copy_app(tmp_path / "app")
    instance = project / "instance"
    key_file = instance / "secret_key"
    checkout_key = PROJECT_ROOT / "instance" / "secret_key"
    checkout_key_before = _fingerprint(checkout_key)

    db_file = tmp_path / "titanic.db"
    env = server_env(DATABASE_URL=f"sqlite:///{db_file}", MODEL_DIR=str(model_dir))  # SECRET_KEY unset
    init_db(project, {**env, "SECRET_KEY": "only-for-init-db"})  # must not create the key itself
    assert not key_file.exists()

    with GunicornServer(project, env, tmp_path / "gunicorn.log") as server:
        workers = server.worker_pids()
        assert len(workers) == 2, f"expected 2 gunicorn workers, the master has children {workers}"
        assert key_file.exists(), f"no key generated in {instance} (did the server import another copy?)"
        assert re.fullmatch(r"[0-9a-f]{64}", key_file.read_text().strip())
        assert not list(instance.glob(".secret_key.*")), "a temporary key file was left behind"

        # One browser gets the form (token and session cookie signed by whichever worker answered) ...
        with requests.Session() as browser:
            page = browser.get(f"{server.base_url}/", timeout=TIMEOUT)
            assert page.status_code == 200, page.text[:1000]
            token = csrf_token(page.text)
            cookies = {"session": browser.cookies["session"]}

        # ... and posts it back over many fresh connections, concurrently, so both workers check it.
        def post(_: int) -> requests.Response:
            return requests.post(
                f"{server.base_url}/", data={**FORM, "csrf_token": token}, cookies=cookies, timeout=TIMEOUT
            )

        start = len(server.access_log())
        sent, served_by = 0, set()
        with ThreadPoolExecutor(max_workers=6) as pool:
            for _ in range(8):
                responses = list(pool.map(post, range(12)))
                sent += len(responses)
                for response in responses:
                    assert response.status_code == 200, (
                        f"a worker refused another worker's form ({response.status_code}):\n{response.text[:1500]}"
                    )
                    assert PROBABILITY.search(response.text), response.text[:1500]
                lines = wait_for_access_lines(server, start, sent)
                served_by = {int(line["pid"]) for line in lines if line["method"] == "POST"}
                if served_by >= workers:
                    break
        assert served_by == workers, f"the form posts were served by {served_by}, the workers are {workers}"

    assert _fingerprint(checkout_key) == checkout_key_before, "the checkout's instance/secret_key changed"
