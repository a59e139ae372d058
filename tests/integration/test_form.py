"""The HTML form end to end, with CSRF on as in production."""

from __future__ import annotations

import re
import time
import warnings
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import encode_multipart

from tests.conftest import FORM_VALUES, PASSENGER, count_rows, csrf_token, flush
from titanic_web.extensions import db
from titanic_web.models import FeatureRow, PredictionRow
from titanic_web.predictor import Predictor
from titanic_web.web.explanation import LABELS

#: The schema's fields in the contract's (Kaggle) order, as the form must show them.
FIELD_NAMES = ["PassengerId", "Pclass", "Sex", "Name", "Age", "SibSp", "Parch", "Ticket", "Fare", "Cabin", "Embarked"]
SELECTS = {"Pclass": ["1", "2", "3"], "Sex": ["male", "female"], "Embarked": ["", "C", "Q", "S"]}

#: PASSENGER as a browser submits it: text for every field.
SCRIPT_NAME = '<script>alert("pwned")</script>, Mr. Evil'
EXPIRED_TEXT = "Your form had expired"


class Page(HTMLParser):
    """What a browser would see of the form: controls, their values, field boxes and links."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.order: list[str] = []
        self.tags: dict[str, str] = {}
        self.values: dict[str, str] = {}
        self.options: dict[str, list[str]] = {}
        self.fields: list[dict[str, Any]] = []  # one per <div class="field">
        self.refs: list[str] = []  # every src= and href=
        self.stray_errors: list[str] = []  # <p class="error"> outside any field box
        self._divs: list[dict[str, Any] | None] = []
        self._select: str | None = None
        self._error: list[str] | None = None
        self.feed(html)
        self.close()

    def _field(self) -> dict[str, Any] | None:
        open_fields = [d for d in self._divs if d is not None]
        return open_fields[-1] if open_fields else None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for key in ("src", "href"):
            if a.get(key) is not None:
                self.refs.append(a[key] or "")
        classes = (a.get("class") or "").split()
        if tag == "div":
            box = {"names": [], "errors": []} if "field" in classes else None
            if box is not None:
                self.fields.append(box)
            self._divs.append(box)
        elif tag in ("input", "select", "textarea") and a.get("name"):
            name = a["name"] or ""
            self.order.append(name)
            self.tags[name] = tag
            if tag == "input":
                self.values[name] = a.get("value") or ""
            else:
                self._select = name
                self.options[name] = []
            if (box := self._field()) is not None:
                box["names"].append(name)
        elif tag == "option" and self._select:
            value = a.get("value") or ""
            self.options[self._select].append(value)
            if "selected" in a or self._select not in self.values:
                self.values[self._select] = value
        elif tag == "p" and "error" in classes:
            self._error = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._divs:
            self._divs.pop()
        elif tag == "select":
            self._select = None
        elif tag == "p" and self._error is not None:
            text = "".join(self._error).strip()
            if (box := self._field()) is not None:
                box["errors"].append(text)
            else:
                self.stray_errors.append(text)
            self._error = None

    def handle_data(self, data: str) -> None:
        if self._error is not None:
            self._error.append(data)

    def errors_of(self, name: str) -> list[str]:
        boxes = [f for f in self.fields if name in f["names"]]
        assert len(boxes) == 1, f"{name} is not in exactly one .field box"
        return boxes[0]["errors"]


def tag_of(html: str, field: str) -> str:
    """The opening tag of the control whose id is the field's name."""
    match = re.search(rf'<(?:input|select)\b[^>]*\bid="{field}"[^>]*>', html)
    assert match, f"no control with id {field}"
    return match.group(0)


def submit(client: FlaskClient, values: dict[str, str], *, token: str | None = "fetch") -> Any:
    """POST the form; token "fetch" gets a real one from GET / first, None sends none."""
    data = dict(values)
    if token == "fetch":
        token = csrf_token(client.get("/").get_data(as_text=True))
    if token is not None:
        data["csrf_token"] = token
    return client.post("/", data=data)


def stored_rows(app: Flask) -> list[tuple[PredictionRow, FeatureRow]]:
    flush(app)
    with app.app_context():
        rows = db.session.execute(
            db.select(PredictionRow, FeatureRow).join(FeatureRow, FeatureRow.prediction_id == PredictionRow.id)
        ).all()
        db.session.expunge_all()
    return [(p, f) for p, f in rows]


def assert_values_kept(page: Page, values: dict[str, str]) -> None:
    for name, value in values.items():
        assert page.values.get(name) == value, f"{name}: {page.values.get(name)!r} != {value!r}"


# -- rendering -----------------------------------------------------------------------------------


def test_form_renders_every_schema_field(client: FlaskClient) -> None:
    response = client.get("/")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    page = Page(html)
    assert [n for n in page.order if n != "csrf_token"] == FIELD_NAMES
    for name in FIELD_NAMES:
        expected_tag = "select" if name in SELECTS else "input"
        assert page.tags[name] == expected_tag, name
        assert re.search(rf'<label for="{name}">[^<]+</label>', html), f"no label for {name}"
        assert page.errors_of(name) == []
    for name, options in SELECTS.items():
        assert page.options[name] == options
    for name in ("Pclass", "Sex"):  # required, but HTML allows `required` on a select only with an empty option
        attributes = dict(re.findall(r'\s([\w-]+)(?:="([^"]*)")?', tag_of(html, name)))
        assert "required" not in attributes and attributes["aria-required"] == "true", attributes
    assert page.tags["csrf_token"] == "input"
    assert len(csrf_token(html)) > 20
    assert 'id="probability"' not in html


def test_the_model_card_is_linked_only_while_a_browser_can_open_it(make_app: Any) -> None:
    link = 'href="/api/model"'
    assert link in make_app().test_client().get("/").get_data(as_text=True)
    # With API_KEYS set the card needs a key, which a browser has no way to send.
    locked = make_app(API_KEYS=("k" * 32,)).test_client()
    assert locked.get("/api/model").status_code == 401
    assert link not in locked.get("/").get_data(as_text=True)


def test_form_renders_without_deprecation_warnings(client: FlaskClient) -> None:
    """Named on its own: under filterwarnings=error a deprecation turns every form page into a 500
    (WTForms 3.3 deprecated tuple choices for removal in 3.4, which setup.cfg allows)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response = client.get("/")
        submit(client, FORM_VALUES, token=None)  # the expired-form page builds the form too

    assert response.status_code == 200
    assert [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)] == []


# -- a valid submission --------------------------------------------------------------------------


def test_valid_submission_shows_probability_and_verdict(client: FlaskClient, predictor: Predictor) -> None:
    response = submit(client, FORM_VALUES)

    assert response.status_code == 200
    html = response.get_data(as_text=True)
    truth = predictor.predict(PASSENGER)
    shown = re.search(r'<span id="probability">([^<]*)</span>', html)
    assert shown, "no probability on the page"
    assert shown.group(1) == f"{truth.probability * 100:.1f}%"
    verdict = re.search(r'<p class="verdict">([^<]*)</p>', html)
    assert verdict and verdict.group(1) == ("Likely survived" if truth.survived else "Likely did not survive")


def test_the_result_shows_why_as_a_chart_drawn_on_the_server(client: FlaskClient, predictor: Predictor) -> None:
    """The explanation chart: one bar per feature, largest first, in the direction the feature pushed."""
    response = submit(client, FORM_VALUES)

    html = response.get_data(as_text=True)
    truth = predictor.explain(predictor.score([PASSENGER])[1])[0]
    groups = re.findall(r'<g class="contribution (up|down)">\s*<title>([^<]*)</title>', html)
    assert len(groups) == min(len(truth.contributions), 9)  # the top eight and "N other features"
    top = truth.contributions[0]
    assert groups[0][0] == ("up" if top.contribution >= 0 else "down")
    assert groups[0][1].startswith(LABELS[top.feature] + ":")
    assert f"{top.contribution:+.2f}" in groups[0][1]
    directions = [d for d, _ in groups[:8]]
    assert directions == ["up" if c.contribution >= 0 else "down" for c in truth.contributions[:8]]
    assert "<script" not in html.split('<svg class="explanation-chart"')[1].split("</svg>")[0]


def test_a_model_that_cannot_explain_still_answers_the_form(client: FlaskClient, app: Flask) -> None:
    from titanic_web import get_service

    get_service(app).predictor.compiled = None
    response = submit(client, FORM_VALUES)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert '<span id="probability">' in html and "explanation-chart" not in html


def test_valid_submission_keeps_values_and_stores_form_rows(client: FlaskClient, app: Flask) -> None:
    response = submit(client, FORM_VALUES)

    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert_values_kept(Page(html), FORM_VALUES)
    assert count_rows(app) == (1, 1)
    [(row, feature)] = stored_rows(app)
    assert row.source == "form"
    assert row.passenger_id == 892
    assert f"<code>{row.id}</code>" in html  # the page names the stored prediction
    assert feature.raw_input == PASSENGER


def test_empty_optional_fields_take_the_defaults(client: FlaskClient, app: Flask) -> None:
    values = {name: "" for name in FIELD_NAMES} | {"Pclass": "1", "Sex": "female"}

    response = submit(client, values)

    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert 'id="probability"' in response.get_data(as_text=True)
    [(row, feature)] = stored_rows(app)
    assert row.passenger_id is None
    assert feature.raw_input == {
        "PassengerId": None,
        "Pclass": 1,
        "Sex": "female",
        "Name": "",
        "Age": None,
        "SibSp": 0,
        "Parch": 0,
        "Ticket": "",
        "Fare": None,
        "Cabin": None,
        "Embarked": None,
    }


# -- invalid values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [("Age", "200", "120"), ("Age", "old", "number"), ("SibSp", "-1", "0"), ("Fare", "1e9", "10000")],
)
def test_field_error_is_shown_beside_the_field(
    client: FlaskClient, app: Flask, field: str, value: str, fragment: str
) -> None:
    values = FORM_VALUES | {field: value}

    response = submit(client, values)

    assert response.status_code == 422
    html = response.get_data(as_text=True)
    page = Page(html)
    [error] = page.errors_of(field)
    assert fragment in error
    for other in FIELD_NAMES:
        if other != field:
            assert page.errors_of(other) == [], other
    assert page.stray_errors == []
    # what a screen reader reads with the field: its hint and its error
    assert f'aria-describedby="{field}-hint {field}-error"' in tag_of(html, field)
    assert html.count(f'id="{field}-error"') == 1
    assert_values_kept(page, values)
    assert 'id="probability"' not in html
    assert count_rows(app) == (0, 0)


@pytest.mark.parametrize("left_out", [False, True], ids=["blank", "left-out"])
@pytest.mark.parametrize(("field", "message"), [("Sex", "Sex is required"), ("Pclass", "Ticket class is required")])
def test_missing_required_field_is_422(
    client: FlaskClient, app: Flask, field: str, message: str, left_out: bool
) -> None:
    # A post made by hand may leave a field out altogether: that is no more an answer than a
    # blank one, and the form's initial value (Pclass 3, Sex female) must not stand in for it.
    values = {k: v for k, v in FORM_VALUES.items() if k != field} if left_out else FORM_VALUES | {field: ""}

    response = submit(client, values)

    assert response.status_code == 422
    page = Page(response.get_data(as_text=True))
    [error] = page.errors_of(field)  # the schema's message alone, not WTForms' "Not a valid choice" too
    assert error.startswith(message), error
    assert 'id="probability"' not in response.get_data(as_text=True)
    assert count_rows(app) == (0, 0)


def test_a_form_field_too_large_for_memory_is_413_saying_so(client: FlaskClient, app: Flask) -> None:
    # 600 KB: well inside MAX_CONTENT_LENGTH, over the 500 KB a form field may hold in memory
    data = {**FORM_VALUES, "Name": "x" * 600_000, "csrf_token": csrf_token(client.get("/").get_data(as_text=True))}
    boundary, body = encode_multipart(data)  # as bytes: the test client would spool it to a file it never closes

    response = client.post("/", data=body, content_type=f"multipart/form-data; boundary={boundary}")

    assert response.status_code == 413
    text = response.get_data(as_text=True)
    assert "the form is too large: a field over 500,000 bytes or more than 1,000 fields" in text
    assert "MAX_CONTENT_LENGTH" not in text
    assert count_rows(app) == (0, 0)


def test_optional_field_left_out_of_the_post_is_unknown(client: FlaskClient, app: Flask) -> None:
    values = {k: v for k, v in FORM_VALUES.items() if k not in ("Age", "Embarked")}

    response = submit(client, values)

    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    [(_, feature)] = stored_rows(app)
    # unknown, as a blank field is; not the form's initial 30 and S
    assert feature.raw_input["Age"] is None
    assert feature.raw_input["Embarked"] is None


# -- CSRF ----------------------------------------------------------------------------------------


def assert_expired_form(response: Any, values: dict[str, str], *, old_token: str | None) -> str:
    """The form came back (400, HTML), explains, keeps the values and has a new token."""
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert EXPIRED_TEXT in html
    assert '<form method="post"' in html  # the form itself, not a bare error page
    page = Page(html)
    assert_values_kept(page, values)
    token = csrf_token(html)
    assert token != old_token
    assert 'id="probability"' not in html
    return token


def test_missing_token_rerenders_form_with_fresh_token(client: FlaskClient, app: Flask) -> None:
    response = submit(client, FORM_VALUES, token=None)

    fresh = assert_expired_form(response, FORM_VALUES, old_token=None)
    assert count_rows(app) == (0, 0)
    again = submit(client, FORM_VALUES, token=fresh)  # the new token works
    assert again.status_code == 200
    assert count_rows(app) == (1, 1)


def test_bad_token_rerenders_form_with_fresh_token(client: FlaskClient, app: Flask) -> None:
    client.get("/")  # a session exists, the token does not match it
    bad = "IjQ5ZWNhYjQ4ZGQ5NmRkNTJkNTQ3YWQ0Yzk1NDE3MGJiMTI1ODM2NzIi.aBcDeF.forged-signature"

    response = submit(client, FORM_VALUES, token=bad)

    fresh = assert_expired_form(response, FORM_VALUES, old_token=bad)
    assert count_rows(app) == (0, 0)
    assert submit(client, FORM_VALUES, token=fresh).status_code == 200
    assert count_rows(app) == (1, 1)


def test_expired_token_rerenders_form(make_app: Any) -> None:
    app = make_app(WTF_CSRF_TIME_LIMIT=1)
    client = app.test_client()
    old = csrf_token(client.get("/").get_data(as_text=True))
    time.sleep(2.2)  # itsdangerous counts whole seconds: age 2 > limit 1

    response = submit(client, FORM_VALUES, token=old)

    assert "expired" in response.get_data(as_text=True).lower()
    fresh = assert_expired_form(response, FORM_VALUES, old_token=old)
    assert count_rows(app) == (0, 0)
    assert submit(client, FORM_VALUES, token=fresh).status_code == 200


# -- escaping, static files, no model ------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "token", "status"),
    [({}, "fetch", 200), ({"Age": "200"}, "fetch", 422), ({}, None, 400)],
    ids=["valid", "invalid", "csrf-failed"],
)
def test_script_in_name_is_escaped(client: FlaskClient, extra: dict[str, str], token: str | None, status: int) -> None:
    values = FORM_VALUES | {"Name": SCRIPT_NAME} | extra

    response = submit(client, values, token=token)

    assert response.status_code == status
    html = response.get_data(as_text=True)
    assert "<script" not in html
    assert "&lt;script&gt;" in html or "&lt;script>" in html
    assert Page(html).values["Name"] == SCRIPT_NAME  # shown back exactly, as text


def test_page_uses_only_local_static_files(client: FlaskClient) -> None:
    page = Page(client.get("/").get_data(as_text=True))

    assert "/static/style.css" in page.refs
    assert "data:," in page.refs  # an empty icon: the browser asks for no /favicon.ico, which is a 404
    for ref in set(page.refs) - {"data:,"}:
        assert not re.match(r"(?i)^(https?:)?//", ref), f"external reference {ref!r}"
        assert ref.startswith("/"), f"unexpected reference {ref!r}"
    for ref in {r for r in page.refs if r.startswith("/static/")}:
        with client.get(ref) as response:
            assert response.status_code == 200, ref


def test_stylesheet_is_served(client: FlaskClient) -> None:
    with client.get("/static/style.css") as response:
        assert response.status_code == 200
        assert response.mimetype == "text/css"
        assert response.get_data(as_text=True).strip()


def test_form_without_model_says_to_train(make_app: Any, no_model_dir: Path) -> None:
    app = make_app(MODEL_DIR=no_model_dir)
    client = app.test_client()

    response = submit(client, FORM_VALUES)

    assert response.status_code == 503
    html = response.get_data(as_text=True)
    assert "train" in html
    assert_values_kept(Page(html), FORM_VALUES)
    assert count_rows(app) == (0, 0)
