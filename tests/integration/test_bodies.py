"""Request bodies cut short or unreadable: a 400 naming the problem, and nothing stored.

gunicorn marks its input ``wsgi.input_terminated`` and returns fewer bytes when a client
goes away before its Content-Length; a malformed chunk makes its stream raise its own
exception types. These tests build such a WSGI environ by hand (Flask's test client
always sends whole bodies) and call the app as gunicorn does; tests/system/test_gunicorn.py
does the same over a socket against the real server.
"""

from __future__ import annotations

import io
import json
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask
from werkzeug.test import EnvironBuilder, run_wsgi_app

from tests.conftest import FORM_VALUES, PASSENGER, TEST_CSV, count_rows, csrf_token


def call(
    app: Flask,
    path: str,
    *,
    body: bytes,
    content_type: str,
    announced: int | None,
    stream: Any = None,
    headers: dict[str, str] | None = None,
) -> Any:
    """POST to the app as a server that ends the input stream itself would: ``announced`` is the
    Content-Length (None: a chunked body), ``stream`` what the body is read from."""
    environ = EnvironBuilder(
        path=path, method="POST", data=body, content_type=content_type, headers=headers
    ).get_environ()
    environ["wsgi.input"] = stream if stream is not None else io.BytesIO(body)
    environ["wsgi.input_terminated"] = True
    if announced is None:
        environ.pop("CONTENT_LENGTH", None)
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    else:
        environ["CONTENT_LENGTH"] = str(announced)
    app_iter, status, headers = run_wsgi_app(app, environ)
    data = b"".join(app_iter)
    getattr(app_iter, "close", lambda: None)()
    return int(status.split()[0]), headers, data


def json_answer(status: int, headers: Any, data: bytes) -> dict[str, Any]:
    assert headers["Content-Type"].startswith("application/json"), (status, data[:300])
    answer: dict[str, Any] = json.loads(data)
    assert status == 200 or answer["code"] == status, answer
    return answer


def test_a_whole_body_with_its_content_length_is_answered(app: Flask) -> None:
    body = json.dumps(PASSENGER).encode()
    status, headers, data = call(app, "/api/predict", body=body, content_type="application/json", announced=len(body))

    assert status == 200, data[:500]
    assert len(json_answer(status, headers, data)["predictions"]) == 1
    assert count_rows(app) == (1, 1)


@pytest.mark.parametrize(
    "content_type, body",
    [
        # The half of the competition's file that arrived: whole lines, each a valid passenger.
        ("text/csv", TEST_CSV.read_bytes()[: TEST_CSV.read_bytes().rfind(b"\n", 0, 20_000) + 1]),
        # A whole JSON passenger, announced as longer than it is.
        ("application/json", json.dumps(PASSENGER).encode()),
    ],
    ids=["csv-half-sent", "json-shorter-than-announced"],
)
def test_a_body_shorter_than_its_content_length_is_400_and_stores_nothing(
    app: Flask, content_type: str, body: bytes
) -> None:
    announced = len(body) + 10_000
    status, headers, data = call(app, "/api/predict", body=body, content_type=content_type, announced=announced)

    assert status == 400, data[:500]
    message = json_answer(status, headers, data)["message"]
    assert f"ended before the {announced:,} bytes its Content-Length announced" in message, message
    assert "nothing was stored" in message
    assert count_rows(app) == (0, 0)


@pytest.mark.parametrize("announced", ["whole", "longer"])
def test_a_form_shorter_than_its_content_length_is_refused_and_stores_nothing(app: Flask, announced: str) -> None:
    client = app.test_client()
    token = csrf_token(client.get("/").get_data(as_text=True))
    cookie = client.get_cookie("session")
    assert cookie is not None
    body = urlencode({**FORM_VALUES, "csrf_token": token}).encode()
    status, headers, data = call(
        app,
        "/",
        body=body,
        content_type="application/x-www-form-urlencoded",
        announced=len(body) + (100 if announced == "longer" else 0),
        headers={"Cookie": f"session={cookie.value}"},
    )

    if announced == "whole":  # the same form, whole: answered and stored
        assert (status, count_rows(app)) == (200, (1, 1)), data[:500]
        return
    assert status == 400, data[:500]
    assert headers["Content-Type"].startswith("text/html")
    assert b"Content-Length" in data and b"nothing was stored" in data
    assert count_rows(app) == (0, 0)


class BrokenChunks:
    """A server's chunked input stream (``read`` only, as gunicorn's) that yields some bytes,
    then raises ``error``."""

    def __init__(self, head: bytes, error: Exception) -> None:
        self.head, self.error = head, error

    def read(self, size: int | None = -1) -> bytes:
        if self.head:
            taken = self.head if size is None or size < 0 else self.head[:size]
            self.head = self.head[len(taken) :]
            return taken
        raise self.error


class InvalidChunkSize(Exception):
    """What a WSGI server's own parser raises for a chunk size that is not hexadecimal."""


@pytest.mark.parametrize(
    "error, expected",
    [
        (InvalidChunkSize("Invalid chunk size: b'zz'"), "chunked encoding cannot be read (Invalid chunk size: b'zz')"),
        (ConnectionResetError(104, "Connection reset by peer"), "ended before its last chunk"),
    ],
    ids=["malformed-chunk", "connection-lost-in-a-chunk"],
)
@pytest.mark.parametrize("content_type", ["text/csv", "application/json"])
def test_a_chunked_body_that_cannot_be_read_is_400_and_stores_nothing(
    app: Flask, content_type: str, error: Exception, expected: str
) -> None:
    head = TEST_CSV.read_bytes()[:5_000] if content_type == "text/csv" else b'[{"Pclass": 3, "Sex": "male"}, '
    status, headers, data = call(
        app, "/api/predict", body=b"", content_type=content_type, announced=None, stream=BrokenChunks(head, error)
    )

    assert status == 400, data[:500]
    message = json_answer(status, headers, data)["message"]
    assert expected in message and "nothing was stored" in message, message
    assert count_rows(app) == (0, 0)
