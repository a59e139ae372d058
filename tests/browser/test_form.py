"""The passenger form in a real browser (Debian's Chromium) against a real gunicorn.

What the test client cannot show: the page as a browser builds and submits it (its
selects, its cookies, its CSRF token), where an error lands on screen, and a form
left open past its token's lifetime.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Page, Response

from tests.browser.conftest import Site, running_site, stored_key

pytestmark = pytest.mark.browser

SUBMIT = "Predict survival"  # the button's text
EXPIRED_TEXT = "Your form had expired"
FIX_NOTICE = "Some values need fixing"

#: What the user types or picks, by field name (selects by option value).
PASSENGER = {
    "Pclass": "1",
    "Sex": "female",
    "Name": "Doe, Mrs. Jane",
    "Age": "29",
    "SibSp": "1",
    "Parch": "0",
    "Ticket": "PC 17599",
    "Fare": "100",
    "Cabin": "C85",
    "Embarked": "C",
}
SELECTS = {"Pclass", "Sex", "Embarked"}
#: The same passenger as the server must have stored it (the validated input).
RAW_INPUT = {
    "PassengerId": None,
    "Pclass": 1,
    "Sex": "female",
    "Name": "Doe, Mrs. Jane",
    "Age": 29,
    "SibSp": 1,
    "Parch": 0,
    "Ticket": "PC 17599",
    "Fare": 100,
    "Cabin": "C85",
    "Embarked": "C",
}


# -- helpers -------------------------------------------------------------------------------------


def control(page: Page, name: str) -> Any:
    return page.locator(f"[name='{name}']")


def fill_passenger(page: Page, values: dict[str, str]) -> None:
    """Type into the inputs and pick the options, as a user would."""
    for name, value in values.items():
        if name in SELECTS:
            control(page, name).select_option(value)
        else:
            control(page, name).fill(value)


def submit(page: Page) -> Response:
    """Click the button; return the POST's response once the page it answered has loaded."""
    page.evaluate("window.__before_submit = true")  # gone once the answer replaces this document
    with page.expect_response(lambda r: r.request.method == "POST" and r.url == page.url) as answer:
        page.get_by_role("button", name=SUBMIT).click()
    page.wait_for_function("() => window.__before_submit === undefined")
    page.wait_for_load_state("load")
    return answer.value


def shown_values(page: Page) -> dict[str, str]:
    return {name: control(page, name).input_value() for name in PASSENGER}


def shown_result(page: Page) -> tuple[str, float, str]:
    """(verdict, percent, prediction id) as the result box shows them."""
    verdict = page.locator(".result .verdict").inner_text()
    percent = page.locator("#probability").inner_text()
    assert re.fullmatch(r"\d{1,3}\.\d%", percent), percent
    meta = page.locator(".result .meta code").inner_text()
    return verdict, float(percent.rstrip("%")), meta


def predict_via_api(site: Site, passenger: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(f"{site.server.base_url}/api/predict", json=passenger, timeout=30)
    assert response.status_code == 200, response.text[:1000]
    answer: dict[str, Any] = response.json()["predictions"][0]
    return answer


def assert_only_new(site: Site, before: tuple[set[str], set[str]], expected: set[str]) -> None:
    """Wait until `expected` (stored keys) are in both tables, then check nothing else is new.

    The server has one worker whose writer delivers its spool in order, so once the last
    expected prediction is in, anything answered before it would be in too.
    """
    predictions, features = site.wait_for_ids(lambda p, f: expected <= p and expected <= f)
    new = (predictions - before[0], features - before[1])
    assert new == (expected, expected), (
        f"expected exactly {sorted(expected)} in both tables, new rows are {new}\n{site.server.output()[-3000:]}"
    )


# -- (a) a valid passenger -----------------------------------------------------------------------


def test_submitted_passenger_is_predicted_shown_and_stored(site: Site, page: Page) -> None:
    before = site.settled_ids()
    page.goto(site.url)
    assert page.locator("#probability").count() == 0
    fill_passenger(page, PASSENGER)

    response = submit(page)

    assert response.status == 200, response.text()[:2000]
    verdict, percent, prediction_id = shown_result(page)
    assert verdict in ("Likely survived", "Likely did not survive")
    assert shown_values(page) == PASSENGER, "the form lost the values it was given"
    assert page.locator("p.error").count() == 0

    # The browser's rows: exactly this prediction, from the form, with what was typed.
    assert_only_new(site, before, {stored_key(prediction_id)})
    row, raw_input = site.stored(prediction_id)
    assert row["source"] == "form"
    assert raw_input == RAW_INPUT
    assert round(row["probability"] * 100, 1) == percent

    # The API answers the same passenger with the same probability and verdict.
    api = predict_via_api(site, RAW_INPUT)
    assert round(api["probability"] * 100, 1) == percent, (api, percent)
    assert verdict == ("Likely survived" if api["survived"] else "Likely did not survive")


# -- (b) an invalid value ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("Age", "200", "Age must be a number from 0 to 120, got 200"),
        ("Fare", "20000", "Fare must be a number from 0 to 10000, got 20000"),
    ],
)
def test_invalid_value_is_explained_beside_its_field_and_nothing_stored(
    site: Site, page: Page, field: str, value: str, message: str
) -> None:
    before = site.settled_ids()
    page.goto(site.url)
    fill_passenger(page, {**PASSENGER, field: value})

    response = submit(page)

    assert response.status == 422, response.text()[:2000]
    assert page.locator("#probability").count() == 0, "predicted on an invalid value"
    assert FIX_NOTICE in page.get_by_role("alert").inner_text()
    # Exactly one error on the page, inside the invalid field's own box, under its input.
    errors = page.locator("p.error")
    assert errors.all_inner_texts() == [message]
    box = page.locator(".field", has=control(page, field))
    assert box.get_attribute("class").split() == ["field", "has-error"]
    assert box.locator("p.error").inner_text() == message
    assert control(page, field).get_attribute("aria-invalid") == "true"
    input_box, error_box, field_box = (control(page, field).bounding_box(), errors.bounding_box(), box.bounding_box())
    assert input_box and error_box and field_box
    assert error_box["y"] >= input_box["y"] + input_box["height"] - 1, "the message is not below its input"
    assert field_box["x"] <= error_box["x"] < field_box["x"] + field_box["width"], "the message left its field"
    assert error_box["y"] + error_box["height"] <= field_box["y"] + field_box["height"] + 1
    assert page.locator(f"#{field}-error").is_visible()
    assert shown_values(page) == {**PASSENGER, field: value}, "the form lost the values it was given"

    # Fixing the value and submitting again predicts; only that prediction is stored.
    control(page, field).fill(PASSENGER[field])
    again = submit(page)
    assert again.status == 200, again.text()[:2000]
    _, _, prediction_id = shown_result(page)
    assert page.locator("p.error").count() == 0
    assert_only_new(site, before, {stored_key(prediction_id)})


# -- (c) a form left open past its CSRF token's lifetime -----------------------------------------


@pytest.fixture
def short_lived_tokens(model_dir: Path, tmp_path: Path) -> Iterator[Site]:
    """A second server whose form tokens expire after one second."""
    with running_site(model_dir, tmp_path, CSRF_TIME_LIMIT="1") as running:
        yield running


def test_expired_form_is_shown_again_with_its_values_then_submits(short_lived_tokens: Site, page: Page) -> None:
    site = short_lived_tokens
    before = site.settled_ids()
    page.goto(site.url)
    fill_passenger(page, PASSENGER)
    old_token = control(page, "csrf_token").input_value()
    time.sleep(2.2)  # itsdangerous counts whole seconds: an age of 2 is past the limit of 1

    expired = submit(page)

    assert expired.status == 400, expired.text()[:2000]
    assert EXPIRED_TEXT in page.get_by_role("alert").inner_text()
    assert page.locator("#probability").count() == 0
    assert page.locator("p.error").count() == 0
    assert shown_values(page) == PASSENGER, "the expired form lost its values"
    assert control(page, "csrf_token").input_value() != old_token, "no fresh token to submit with"

    # Submitting again, at once, goes through with the fresh token; only that prediction is stored.
    again = submit(page)

    assert again.status == 200, again.text()[:2000]
    assert page.get_by_role("alert").count() == 0
    _, _, prediction_id = shown_result(page)
    assert_only_new(site, before, {stored_key(prediction_id)})
    _, raw_input = site.stored(prediction_id)
    assert raw_input == RAW_INPUT


# -- (d) screenshots for the documentation -------------------------------------------------------


def test_screenshots_of_form_and_result(site: Site, page: Page, screenshots: Path) -> None:
    page.goto(site.url)
    page.screenshot(path=screenshots / "form.png")

    fill_passenger(page, PASSENGER)
    assert submit(page).status == 200
    page.locator(".result").wait_for()
    # The prediction's uuid is new on every run: masked (a --line grey bar), the picture is the
    # same each run, so running the tests does not leave a changed file in the checkout.
    page.screenshot(path=screenshots / "result.png", mask=[page.locator(".result .meta code")], mask_color="#d5dae3")

    for name in ("form.png", "result.png"):
        data = (screenshots / name).read_bytes()
        assert data.startswith(b"\x89PNG"), name
        assert len(data) < 500_000, f"{name} is {len(data)} bytes"
