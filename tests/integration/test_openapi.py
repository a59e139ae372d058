"""/api/openapi.json and /docs: in step with the app's routes, served, and true of the app's answers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from jsonschema import Draft202012Validator

from tests.conftest import PASSENGER
from tests.integration.conftest import MakeApp
from titanic_web import __version__
from titanic_web.api.spec import build_spec

#: Methods Flask (werkzeug) adds to every rule by itself; the document leaves them out.
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}
KEY = "integration-user-key-0123456789"
ADMIN_KEY = "integration-admin-key-0123456789"


def documented_rules(app: Flask) -> dict[str, set[str]]:
    """The app's routes the document must describe (/api/... and /metrics), as OpenAPI paths with their methods."""
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/") or rule.rule in ("/api", "/metrics"):
            path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)  # /x/<uuid:id> -> /x/{id}
            routes.setdefault(path, set()).update(m.lower() for m in (rule.methods or set()) - IMPLICIT_METHODS)
    return routes


def test_every_route_is_documented_and_every_documented_route_exists(make_app: MakeApp) -> None:
    app = make_app()
    spec = build_spec(max_rows=app.config["MAX_ROWS"], version=__version__)
    documented = {path: set(item) for path, item in spec["paths"].items()}
    assert documented == documented_rules(app)


def test_the_document_is_served_with_this_apps_limits(make_app: MakeApp) -> None:
    client = make_app(MAX_ROWS=7).test_client()
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.json == build_spec(max_rows=7, version=__version__)
    assert response.json["components"]["schemas"]["Passengers"]["maxItems"] == 7


def test_the_document_and_the_page_need_no_key(make_app: MakeApp) -> None:
    client = make_app(API_KEYS=(KEY,)).test_client()
    assert client.post("/api/predict", json=PASSENGER).status_code == 401  # the keys are on
    assert client.get("/api/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200


def test_the_page_shows_every_operation_field_and_schema(make_app: MakeApp) -> None:
    app = make_app()
    spec = build_spec(max_rows=app.config["MAX_ROWS"], version=__version__)
    response = app.test_client().get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert f'id="{operation["operationId"]}"' in page
            assert f"<code>{method.upper()} {path}</code>" in page
            for status in operation["responses"]:
                assert f">{status}</span>" in page, (method, path, status)
    for name in spec["components"]["schemas"]:
        assert f'id="schema-{name}"' in page
    for name in spec["components"]["schemas"]["Passenger"]["properties"]:
        assert f"<code>{name}</code>" in page
    assert 'href="/api/openapi.json"' in page


def test_the_page_needs_no_script_and_no_inline_style(make_app: MakeApp) -> None:
    """The Content-Security-Policy forbids inline scripts and styles: the page uses neither, nor any other site."""
    page = make_app().test_client().get("/docs").get_data(as_text=True)
    assert "<script" not in page
    assert "<style" not in page
    assert " style=" not in page
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page), "the page loads nothing from elsewhere"


# -- answers the fuzzing cannot reach, checked against the document --------------------------------


def check_answer(spec: dict[str, Any], method: str, path: str, response: Any) -> None:
    """The answer's status is documented for the operation, and its body and headers are as documented."""
    operation = spec["paths"][path][method.lower()]
    status = str(response.status_code)
    assert status in operation["responses"], f"{method} {path}: {status} is not documented: {response.data[:300]!r}"
    documented = operation["responses"][status]
    assert response.mimetype in documented["content"], (status, response.mimetype)
    schema = documented["content"][response.mimetype]["schema"]
    # The body's schema with the document's components beside it, so that its $refs resolve.
    Draft202012Validator({**schema, "components": spec["components"]}).validate(response.json)
    for header, definition in documented.get("headers", {}).items():
        if definition.get("required"):
            assert header in response.headers, f"{status} lacks its {header} header"


@pytest.fixture
def spec() -> dict[str, Any]:
    return build_spec(max_rows=3, version=__version__)


def test_key_answers_are_documented(make_app: MakeApp, spec: dict[str, Any]) -> None:
    client = make_app(MAX_ROWS=3, API_KEYS=(KEY,), ADMIN_API_KEYS=(ADMIN_KEY,)).test_client()
    for path in ("/api/predict", "/api/outcomes", "/api/model/activate"):
        for headers in ({}, {"X-API-Key": "x" * 20}):  # no key, an unknown key
            answer = client.post(path, json={}, headers=headers)
            assert answer.status_code == 401, (path, headers, answer.status_code, answer.data[:300])
            assert (answer.json or {}).get("code") == 401, (path, headers, answer.json)
            check_answer(spec, "POST", path, answer)
    check_answer(spec, "GET", "/api/model", client.get("/api/model"))
    answer = client.post("/api/model/activate", json={"version": "x"}, headers={"Authorization": f"Bearer {KEY}"})
    check_answer(spec, "POST", "/api/model/activate", answer)


def test_rate_limited_answers_are_documented(make_app: MakeApp, spec: dict[str, Any]) -> None:
    client = make_app(MAX_ROWS=3, RATE_LIMIT="1/minute").test_client()
    assert client.post("/api/predict", json=PASSENGER).status_code == 200
    answer = client.post("/api/predict", json=PASSENGER)
    assert answer.status_code == 429
    check_answer(spec, "POST", "/api/predict", answer)


def test_answers_without_a_model_are_documented(make_app: MakeApp, no_model_dir: Path, spec: dict[str, Any]) -> None:
    client = make_app(MAX_ROWS=3, MODEL_DIR=no_model_dir).test_client()
    for method, path, answer in (
        ("POST", "/api/predict", client.post("/api/predict", json=PASSENGER)),
        ("GET", "/api/model", client.get("/api/model")),
        ("GET", "/api/ready", client.get("/api/ready")),
    ):
        assert answer.status_code == 503, (path, answer.data[:300])
        check_answer(spec, method, path, answer)


def test_other_error_answers_are_documented(make_app: MakeApp, spec: dict[str, Any]) -> None:
    client = make_app(MAX_ROWS=3).test_client()
    cases = [
        ("/api/predict", dict(data=b"{", content_type="application/json"), 400),
        ("/api/predict", dict(json=[PASSENGER] * 4), 413),
        ("/api/predict", dict(data=b"x", content_type="text/plain"), 415),
        ("/api/predict", dict(json={**PASSENGER, "Age": -1}), 422),
        ("/api/predict", dict(json=PASSENGER, query_string={"explain": "maybe"}), 400),
        ("/api/outcomes", dict(json=[]), 400),
        ("/api/outcomes", dict(json={"id": "not-a-uuid", "survived": 2}), 422),
        ("/api/outcomes", dict(data=b"x", content_type="text/plain"), 415),
    ]
    for path, request, status in cases:
        answer = client.post(path, **request)
        assert answer.status_code == status, (path, request, answer.data[:300])
        check_answer(spec, "POST", path, answer)


@pytest.mark.parametrize(
    "value",
    ["true", "TRUE", " yes ", "On", "1", "0", "", "no", "oFF", "\u3000false", "maybe", "2", "t", "truth", "\ufefftrue"],
)
def test_the_explain_parameter_is_documented_exactly(make_app: MakeApp, spec: dict[str, Any], value: str) -> None:
    """The document's rule for ?explain= accepts exactly the values the API accepts."""
    parameter = spec["paths"]["/api/predict"]["post"]["parameters"][0]
    documented = Draft202012Validator(parameter["schema"]).is_valid(value)
    answer = make_app(MAX_ROWS=3).test_client().post("/api/predict", json=PASSENGER, query_string={"explain": value})
    assert answer.status_code == (200 if documented else 400), answer.data[:300]
    check_answer(spec, "POST", "/api/predict", answer)
