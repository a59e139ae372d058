"""The OpenAPI document: valid OpenAPI 3.1, its passenger agrees with the schema's checks, one error shape."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from titanic_web.api.spec import build_spec, passenger_schema
from titanic_web.schema import FIELDS, Field, validate_passenger

SPEC = build_spec(max_rows=100, version="0.0.0")
PASSENGER = {
    "PassengerId": 892,
    "Pclass": 3,
    "Sex": "male",
    "Name": "Kelly, Mr. James",
    "Age": 34.5,
    "SibSp": 0,
    "Parch": 0,
    "Ticket": "330911",
    "Fare": 7.8292,
    "Cabin": None,
    "Embarked": "Q",
}


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(SPEC)  # raises, naming the place, on any departure from the OpenAPI 3.1 schema
    assert SPEC["openapi"] == "3.1.0"


def test_max_rows_bounds_every_array_of_items() -> None:
    spec = build_spec(max_rows=7, version="0.0.0")
    assert spec["components"]["schemas"]["Passengers"]["maxItems"] == 7
    outcomes = spec["paths"]["/api/outcomes"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert outcomes["oneOf"][1]["maxItems"] == 7


def _field_values(field: Field) -> list[Any]:
    """Values around each rule of a field: the edges, just past them, other types, null."""
    values: list[Any] = [None, True, [], {}, "", " ", "text", 0, 1, -1, 2.5, 1e300]
    values += [value for value, _ in field.choices] + [
        f" {value}" for value, _ in field.choices if isinstance(value, str)
    ]
    for bound in (field.minimum, field.maximum):
        if bound is not None:
            values += [bound, bound - 1, bound + 1, bound - 0.5, bound + 0.5, float(bound)]
    if field.max_length is not None:
        values += [
            "x" * field.max_length,
            "x" * (field.max_length + 1),
            " " + "x" * field.max_length + "\n",
            "x" + " " * (field.max_length - 1) + "x",
            "\x85" + "y" * field.max_length + "\u3000",
        ]
    if field.kind is str:
        # Python's strip() and ECMA-262's \s differ on these: the document must follow strip().
        text = str(field.choices[0][0]) if field.choices else "text"
        values += [f"\x1c{text}", f"{text}\x85", f"\ufeff{text}", f"{text}\n", "\u2028", "\t \r\n"]
        # control characters: refused anywhere in free text, white space ones (tab, U+0085) kept
        values += [f"{text}\x00", f"\x1b[1m{text}", f"t\x7f{text}", "\x9f", f"{text}\tb", "a\x85b", "\x08", " \x0e "]
    return values


CASES = (
    [
        pytest.param({**PASSENGER, field.name: value}, id=f"{field.name}={value!r:.20}")
        for field in FIELDS
        for value in _field_values(field)
    ]
    + [
        pytest.param({k: v for k, v in PASSENGER.items() if k != field.name}, id=f"without {field.name}")
        for field in FIELDS
    ]
    + [
        pytest.param({"Pclass": 1, "Sex": "female"}, id="only the required"),
        pytest.param({**PASSENGER, "age": 3}, id="unknown field"),
        pytest.param({}, id="empty"),
    ]
)


@pytest.mark.parametrize("passenger", CASES)
def test_the_passenger_schema_agrees_with_the_validator(passenger: dict[str, Any]) -> None:
    """The document's passenger accepts exactly what schema.validate_passenger accepts."""
    documented = Draft202012Validator(passenger_schema()).is_valid(passenger)
    _, errors = validate_passenger(passenger)
    assert documented == (not errors), errors or "the document refuses a passenger the API accepts"


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in SPEC["paths"].items() for method, op in item.items()]


def test_operations_have_unique_ids_and_summaries() -> None:
    ids = [op["operationId"] for _, _, op in _operations()]
    assert len(ids) == len(set(ids))
    assert all(op.get("summary") for _, _, op in _operations())


@pytest.mark.parametrize(("path", "method", "operation"), _operations(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_error_answer_has_the_error_shape_with_its_status(
    path: str, method: str, operation: dict[str, Any]
) -> None:
    schemas = SPEC["components"]["schemas"]
    for status, response in operation["responses"].items():
        if int(status) < 400 or path == "/api/ready":  # readiness answers 503 with its own report
            continue
        content = response["content"]
        assert list(content) == ["application/json"], f"{status}: errors are JSON only"
        ref, narrowing = content["application/json"]["schema"]["allOf"]
        name = ref["$ref"].rsplit("/", 1)[1]
        assert name in ("Error", "FieldErrors", "RateLimited")
        assert {"code", "error", "message"} <= set(schemas[name]["required"])
        assert schemas[name]["additionalProperties"] is False
        assert narrowing["properties"]["code"] == {"const": int(status)}
        assert narrowing["properties"]["error"] == {"const": HTTPStatus(int(status)).phrase}


def test_every_object_schema_is_closed() -> None:
    """additionalProperties is false (or a schema, for maps) on every object the document describes."""
    open_objects: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node and "allOf" not in where:
                open_objects.append(where)
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}/{index}")

    walk(SPEC["components"]["schemas"], "#/components/schemas")
    for path, method, operation in _operations():
        walk(operation, f"{method.upper()} {path}")
    assert open_objects == [], open_objects


def test_the_patterns_know_every_white_space_character() -> None:
    """The patterns list the BMP's white space: Unicode has none beyond it."""
    assert not [code for code in range(0x10000, 0x110000) if chr(code).isspace()]
