"""The OpenAPI 3.1 document of every /api route and /metrics, built from the schema's field definitions.

The passenger object is derived from :data:`titanic_web.schema.FIELDS`, the one
definition of fields, types, ranges and defaults, so the document cannot drift
from what the API checks (tests/unit/test_openapi.py holds the two side by side).
The rest is written here; tests/integration/test_openapi.py matches it against
the app's routes, and the fuzzing tests (tests/system/test_fuzz.py) check the
app's answers against it.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

from titanic_web.schema import CONTROL_CHARACTERS, FIELDS, Field

OPENAPI_VERSION = "3.1.0"

#: JSON Schema types of the schema's Python kinds.
_JSON_TYPES = {int: "integer", float: "number", str: "string"}

#: What each error status means on /api/predict (other operations describe their own).
ERROR_STATUSES: dict[int, str] = {
    400: "Malformed body: not JSON, neither an object nor an array, an empty array, a CSV without header or "
    "rows, a body that ended before its Content-Length; explain that is neither true nor false, or given twice; "
    "a query parameter other than explain; or explain=true with Accept: text/csv.",
    401: "API_KEYS is set on the server and the request carries no key, or an unknown one.",
    413: "The body is over MAX_CONTENT_LENGTH bytes, or holds more than MAX_ROWS passengers.",
    415: "A Content-Type other than application/json or text/csv, a charset other than UTF-8, or a "
    "Content-Encoding (send the body uncompressed).",
    422: "Some passenger is invalid: `errors` lists every problem; nothing was predicted or stored.",
    429: "More than RATE_LIMIT requests from this client: wait the `Retry-After` seconds.",
    503: "No usable model is loaded (the message says why), or the local spool refused the answers.",
}

#: The 415 of the operations that read a JSON body.
JSON_ONLY = "A Content-Type other than application/json, a charset other than UTF-8, or a Content-Encoding."

#: Either way of sending a key; listing both as alternatives lets a client pick one.
KEY_SCHEMES: tuple[dict[str, list[str]], ...] = ({"bearerAuth": []}, {"apiKeyHeader": []})
#: Operations that need a key only when API_KEYS is set: the empty requirement is "no key".
OPTIONAL_KEY: list[dict[str, list[str]]] = [{}, *KEY_SCHEMES]
#: Admin actions: an admin key (ADMIN_API_KEYS) always.
ADMIN_KEY: list[dict[str, list[str]]] = list(KEY_SCHEMES)


def ref(name: str) -> dict[str, str]:
    """A JSON reference to a schema under components/schemas."""
    return {"$ref": f"#/components/schemas/{name}"}


def _space_class() -> str:
    """The characters str.strip() removes (str.isspace), as the inside of a regular-expression class.

    Written as \\uXXXX ranges, which ECMA-262 (the document's pattern dialect) and Python read alike.
    """
    # Unicode has no white space beyond the first 65,536 code points (a unit test checks all of them).
    points = [code for code in range(0x10000) if chr(code).isspace()]
    ranges: list[list[int]] = []
    for code in points:
        if ranges and code == ranges[-1][1] + 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    return "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in ranges)


#: White space, and anything else, in the document's patterns.
_SPACES = _space_class()
_SPACE = f"[{_SPACES}]"
#: schema.CONTROL_CHARACTERS, which free text may not hold, as \\uXXXX ranges.
_CONTROLS = "".join(c if c == "-" else f"\\u{ord(c):04x}" for c in CONTROL_CHARACTERS)
_NOT_SPACE = f"[^{_SPACES}{_CONTROLS}]"
_NOT_CONTROL = f"[^{_CONTROLS}]"


def text_pattern(field: Field) -> str:
    """The exact rule of a text field, as the API applies it: surrounding white space is ignored
    (and blank text of a nullable field is null), then the choices, or the length and that free
    text holds no control character but white space, are checked."""
    if field.choices:
        core = "(?:" + "|".join(re.escape(str(value)) for value, _ in field.choices) + ")"
        if field.nullable:
            core += "?"
    elif field.max_length == 1:
        core = f"{_NOT_SPACE}?"
    elif field.max_length is not None:
        # Empty, or from one non-space character to another with at most max_length in all.
        core = f"(?:{_NOT_SPACE}(?:{_NOT_CONTROL}{{0,{field.max_length - 2}}}{_NOT_SPACE})?)?"
    else:
        core = f"{_NOT_CONTROL}*"
    return f"^{_SPACE}*{core}{_SPACE}*$"


#: The words a true/false query parameter takes, in any case, with white space around (routes._flag).
FLAG_WORDS = ("true", "1", "yes", "on", "false", "0", "no", "off")


def flag_pattern() -> str:
    """The exact rule of a true/false query parameter: a flag word in any case, or nothing (false)."""
    words = "|".join("".join(f"[{c.upper()}{c}]" if c.isalpha() else c for c in word) for word in FLAG_WORDS)
    return f"^{_SPACE}*(?:{words})?{_SPACE}*$"


def field_schema(field: Field) -> dict[str, Any]:
    """The JSON Schema of one passenger field: type, range, choices, length and default.

    Text is checked with surrounding white space removed, so a text field's rule is a
    pattern (``text_pattern``) rather than an enum or maxLength, which would count it.
    """
    json_type = _JSON_TYPES[field.kind]
    valid = f"Valid: {field.describe()}"
    if field.kind is str:
        valid += " (surrounding white space is ignored" + ("; blank text is null" if field.nullable else "") + ")"
    out: dict[str, Any] = {
        "title": field.label,
        "description": f"{field.hint} {valid}" + ("; may be null (unknown)." if field.nullable else "."),
        "type": [json_type, "null"] if field.nullable else json_type,
    }
    if field.kind is str:
        out["pattern"] = text_pattern(field)
        if field.choices:
            out["examples"] = [value for value, _ in field.choices]
    elif field.choices:
        out["enum"] = [value for value, _ in field.choices] + ([None] if field.nullable else [])
    if field.minimum is not None:
        out["minimum"] = _number(field.minimum)
    if field.maximum is not None:
        out["maximum"] = _number(field.maximum)
    if not field.required:
        out["default"] = field.default
    return out


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def passenger_schema() -> dict[str, Any]:
    """One passenger as the JSON API takes it: the competition's fields, nothing else."""
    return {
        "type": "object",
        "description": "One passenger, with the Kaggle competition's field names. Unknown fields are an error "
        "that names them; omitted optional fields take their default.",
        "properties": {field.name: field_schema(field) for field in FIELDS},
        "required": [field.name for field in FIELDS if field.required],
        "additionalProperties": False,
        "examples": [
            {
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
            },
        ],
    }


def _error_schemas() -> dict[str, Any]:
    base = {
        "code": {"type": "integer", "minimum": 400, "maximum": 599},
        "error": {"type": "string", "description": "The status phrase, e.g. Unprocessable Entity."},
        "message": {"type": "string", "minLength": 1},
    }
    listed = {
        "errors": {
            "type": "array",
            "items": ref("FieldError"),
            "minItems": 1,
            "maxItems": 1000,
            "description": "Every problem found (the first 1,000).",
        },
        "error_count": {"type": "integer", "minimum": 1, "description": "All problems found, listed or not."},
    }
    return {
        "Error": {
            "type": "object",
            "description": "Every error under /api/: the status, its phrase and a message that names the problem.",
            "properties": base,
            "required": list(base),
            "additionalProperties": False,
        },
        "FieldErrors": {
            "type": "object",
            "description": "An error about the items of the body (422, and 409 for outcomes): every problem, by item; "
            "nothing was stored.",
            "properties": {**base, **listed},
            "required": [*base, *listed],
            "additionalProperties": False,
        },
        "RateLimited": {
            "type": "object",
            "description": "429: the client sent more than RATE_LIMIT requests.",
            "properties": {
                **base,
                "retry_after": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "Seconds to wait, as in the Retry-After header.",
                },
            },
            "required": [*base, "retry_after"],
            "additionalProperties": False,
        },
        "FieldError": {
            "type": "object",
            "properties": {
                "index": {
                    "type": ["integer", "null"],
                    "minimum": 0,
                    "description": "The 0-based item of the body; null for the whole request.",
                },
                "field": {"type": ["string", "null"], "description": "The field at fault; null for the whole item."},
                "message": {"type": "string", "minLength": 1},
                "line": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "CSV uploads: the line (the header is line 1).",
                },
            },
            "required": ["index", "field", "message"],
            "additionalProperties": False,
        },
    }


#: The body schema of each error status, where it is not plain Error.
_ERROR_SCHEMAS = {422: "FieldErrors", 429: "RateLimited"}


def error_response(status: int, description: str | None = None, *, schema: str | None = None) -> dict[str, Any]:
    """A documented error answer: an error schema with its status and phrase fixed."""
    name = schema or _ERROR_SCHEMAS.get(status, "Error")
    response: dict[str, Any] = {
        "description": description or ERROR_STATUSES.get(status, HTTPStatus(status).description),
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [
                        ref(name),
                        {"properties": {"code": {"const": status}, "error": {"const": HTTPStatus(status).phrase}}},
                    ]
                },
            },
        },
    }
    if status == 401:
        response["headers"] = {
            "WWW-Authenticate": {
                "description": "How to send a key: `Bearer`.",
                "required": True,
                "schema": {"type": "string"},
            }
        }
    if status == 429:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds until the limit lets the client in again.",
                "required": True,
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    return response


def _prediction_schemas(max_rows: int) -> dict[str, Any]:
    return {
        "Passenger": passenger_schema(),
        "Passengers": {
            "type": "array",
            "description": f"Several passengers, answered in input order (1 to MAX_ROWS = {max_rows}).",
            "items": ref("Passenger"),
            "minItems": 1,
            "maxItems": max_rows,
        },
        "Prediction": {
            "type": "object",
            "properties": {
                "id": {
                    "type": "string",
                    "format": "uuid",
                    "description": "The prediction's uuid: the key of its rows in predictions and feature_store.",
                },
                "PassengerId": {"type": ["integer", "null"], "minimum": 1, "description": "Echoed from the input."},
                "survived": {
                    "type": "integer",
                    "enum": [0, 1],
                    "description": "1 when probability >= the threshold (0.5).",
                },
                "probability": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 1,
                    "description": "Survival probability, rounded to 4 places.",
                },
                "explanation": {**ref("Explanation"), "description": "Only with `?explain=true`."},
            },
            "required": ["id", "PassengerId", "survived", "probability"],
            "additionalProperties": False,
        },
        "Explanation": {
            "type": "object",
            "description": "The answer taken apart: `base` plus every contribution is `output`, on `scale` "
            "(log-odds: the probability is 1 / (1 + exp(-output)); or probability).",
            "properties": {
                "base": {"type": "number", "description": "The model's output before any feature."},
                "output": {"type": "number"},
                "scale": {"type": "string", "enum": ["log-odds", "probability"]},
                "contributions": {
                    "type": "array",
                    "description": "Every feature the model saw, most important first.",
                    "items": {
                        "type": "object",
                        "properties": {
                            "feature": {"type": "string", "minLength": 1},
                            "value": {
                                "type": ["number", "string", "boolean", "null"],
                                "description": "The engineered value (null: unknown, imputed).",
                            },
                            "contribution": {"type": "number"},
                        },
                        "required": ["feature", "value", "contribution"],
                        "additionalProperties": False,
                    },
                },
            },
            "required": ["base", "output", "scale", "contributions"],
            "additionalProperties": False,
        },
        "PredictResponse": {
            "type": "object",
            "properties": {
                "model_version": {"type": "string", "minLength": 1},
                "predictions": {"type": "array", "items": ref("Prediction"), "minItems": 1, "maxItems": max_rows},
            },
            "required": ["model_version", "predictions"],
            "additionalProperties": False,
        },
    }


def _status_schemas() -> dict[str, Any]:
    scores = {
        "accuracy_mean": {"type": "number", "minimum": 0, "maximum": 1},
        "accuracy_std": {"type": "number", "minimum": 0},
        "roc_auc_mean": {"type": "number", "minimum": 0, "maximum": 1},
        "roc_auc_std": {"type": "number", "minimum": 0},
    }
    return {
        "Health": {
            "type": "object",
            "properties": {"status": {"const": "ok"}},
            "required": ["status"],
            "additionalProperties": False,
        },
        "Ready": {
            "type": "object",
            "properties": {
                "status": {
                    "type": "string",
                    "enum": ["ready", "degraded", "not ready"],
                    "description": "ready; degraded (the database fails, predictions are kept in the "
                    "spool); not ready (no model, or the spool refuses rows: 503).",
                },
                "model": {
                    "type": "object",
                    "properties": {
                        "loaded": {"type": "boolean"},
                        "version": {"type": "string"},
                        "error": {"type": ["string", "null"], "description": "Why no model is loaded."},
                    },
                    "required": ["loaded"],
                    "additionalProperties": False,
                },
                "database": {
                    "type": "object",
                    "properties": {
                        "status": {"type": "string", "enum": ["ok", "degraded"]},
                        "error": {"type": ["string", "null"]},
                    },
                    "required": ["status"],
                    "additionalProperties": False,
                },
                "spool": {
                    "type": "object",
                    "description": "Whether this worker's local spool takes rows (off: RECORDING is false). "
                    "While it fails every prediction answers 503.",
                    "properties": {
                        "status": {"type": "string", "enum": ["ok", "failing", "off"]},
                        "error": {"type": "string"},
                    },
                    "required": ["status"],
                    "additionalProperties": False,
                },
                "backlog": {
                    "type": "object",
                    "description": "This worker's recorder: answered rows not yet in the database.",
                    "properties": {
                        "rows": {"type": "integer", "minimum": 0},
                        "oldest_age_seconds": {"type": ["number", "null"], "minimum": 0},
                        "rows_written": {"type": "integer", "minimum": 0},
                        "writer_running": {"type": "boolean"},
                    },
                    "required": ["rows", "oldest_age_seconds", "rows_written", "writer_running"],
                    "additionalProperties": False,
                },
            },
            "required": ["status", "model", "database", "spool", "backlog"],
            "additionalProperties": False,
        },
        "CvScores": {
            "type": "object",
            "properties": scores,
            "required": list(scores),
            "additionalProperties": False,
        },
        "ModelCard": {
            "type": "object",
            "description": "The card written beside the artifact by `flask train`.",
            "properties": {
                "version": {
                    "type": "string",
                    "pattern": "^[0-9a-f]{12}$",
                    "description": "The first 12 hex digits of the artifact's sha256.",
                },
                "artifact": {"type": "string"},
                "artifact_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "training_data": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string"},
                        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                        "rows": {"type": "integer", "minimum": 1},
                        "survival_rate": {"type": "number", "minimum": 0, "maximum": 1},
                        "sources": {
                            "type": "array",
                            "description": "Every file trained on: train.csv, then any outcomes extract.",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "file": {"type": "string"},
                                    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                                    "rows": {"type": "integer", "minimum": 0},
                                },
                                "required": ["file", "sha256", "rows"],
                                "additionalProperties": False,
                            },
                        },
                    },
                    "required": ["file", "sha256", "rows", "survival_rate"],
                    "additionalProperties": False,
                },
                "libraries": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "required": ["python", "scikit-learn"],
                },
                "cv": {
                    "type": "object",
                    "properties": {
                        "folds": {"type": "integer", "minimum": 2},
                        "seed": {"type": "integer"},
                        "stratified": {"type": "boolean"},
                        **scores,
                    },
                    "required": ["folds", "seed", "stratified", *scores],
                    "additionalProperties": False,
                },
                "candidates": {"type": "object", "additionalProperties": ref("CvScores"), "minProperties": 1},
                "chosen": {"type": "string"},
                "estimator": {"type": "string"},
                "params": {
                    "type": "object",
                    "description": "The estimator's parameters.",
                    "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
                },
                "features": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "threshold": {"type": "number", "minimum": 0, "maximum": 1},
                "trained_at": {"type": "string", "format": "date-time"},
                "training_seconds": {"type": "number", "minimum": 0},
                "outcomes": {
                    **ref("OutcomeFigures"),
                    "description": "This version's accuracy on the outcomes "
                    "recorded for its predictions (null: the database could not be read).",
                },
                "outcomes_error": {"type": "string", "description": "Why outcomes is null."},
                "versions": {
                    "type": "array",
                    "items": ref("ModelVersion"),
                    "description": "The registry's versions, oldest first, then any other version "
                    "with outcomes recorded.",
                },
            },
            "required": [
                "version",
                "artifact",
                "artifact_sha256",
                "training_data",
                "libraries",
                "cv",
                "candidates",
                "chosen",
                "estimator",
                "params",
                "features",
                "threshold",
                "trained_at",
                "training_seconds",
                "outcomes",
                "versions",
            ],
            "additionalProperties": False,
        },
        "OutcomeFigures": {
            "type": ["object", "null"],
            "properties": {
                "count": {"type": "integer", "minimum": 0, "description": "Predictions with a recorded outcome."},
                "correct": {"type": "integer", "minimum": 0},
                "accuracy": {
                    "type": ["number", "null"],
                    "minimum": 0,
                    "maximum": 1,
                    "description": "correct / count; null while count is 0.",
                },
            },
            "required": ["count", "correct", "accuracy"],
            "additionalProperties": False,
        },
        "ModelVersion": {
            "type": "object",
            "properties": {
                "version": {"type": "string", "minLength": 1},
                "trained_at": {"type": ["string", "null"], "format": "date-time"},
                "cv_accuracy": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                "outcomes": ref("OutcomeFigures"),
                "active": {"type": "boolean", "description": "The version the registry's ACTIVE pointer names."},
                "registered": {
                    "type": "boolean",
                    "description": "false: it served and has outcomes, and its folder is gone.",
                },
            },
            "required": ["version", "trained_at", "cv_accuracy", "outcomes", "active", "registered"],
            "additionalProperties": False,
        },
        "Activation": {
            "type": "object",
            "properties": {
                "version": {
                    "type": "string",
                    "minLength": 1,
                    "description": "A registered version (GET /api/model lists them).",
                }
            },
            "required": ["version"],
            "additionalProperties": False,
        },
        "Activated": {
            "type": "object",
            "properties": {
                "active": {"type": "string", "minLength": 1},
                "previous": {"type": ["string", "null"], "description": "The version active before."},
                "message": {"type": "string", "minLength": 1},
            },
            "required": ["active", "previous", "message"],
            "additionalProperties": False,
        },
        "Outcome": {
            "type": "object",
            "description": "What really happened to a predicted passenger.",
            "properties": {
                "id": {
                    "type": "string",
                    "format": "uuid",
                    "description": "The prediction's id, as the API answered it.",
                },
                "survived": {"type": "integer", "enum": [0, 1]},
            },
            "required": ["id", "survived"],
            "additionalProperties": False,
        },
        "OutcomesRecorded": {
            "type": "object",
            "properties": {
                "recorded": {"type": "integer", "minimum": 0, "description": "Outcomes stored now."},
                "unchanged": {"type": "integer", "minimum": 0, "description": "Outcomes already recorded, the same."},
                "outcomes": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "properties": {
                            "id": {"type": "string", "format": "uuid"},
                            "survived": {"type": "integer", "enum": [0, 1]},
                            "status": {"type": "string", "enum": ["recorded", "unchanged"]},
                        },
                        "required": ["id", "survived", "status"],
                        "additionalProperties": False,
                    },
                },
            },
            "required": ["recorded", "unchanged", "outcomes"],
            "additionalProperties": False,
        },
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _paths(max_rows: int) -> dict[str, Any]:
    limited = {"429": error_response(429)}  # every POST counts against RATE_LIMIT
    return {
        "/api/predict": {
            "post": {
                "operationId": "predict",
                "summary": "Predict one passenger, several, or a CSV file of them",
                "description": (
                    "A JSON object answers one prediction; a JSON array answers one per passenger, in input "
                    "order; a CSV file in the competition's test.csv layout answers the same JSON, or a Kaggle "
                    "submission (`PassengerId,Survived`) with `Accept: text/csv`. A request with any invalid "
                    f"passenger is refused whole (422) and nothing is stored. At most MAX_ROWS ({max_rows}) "
                    "passengers in MAX_CONTENT_LENGTH bytes."
                ),
                "security": OPTIONAL_KEY,
                "parameters": [
                    {
                        "name": "explain",
                        "in": "query",
                        "required": False,
                        "description": "true: each prediction carries its `explanation` (JSON answers only). "
                        "Also 1/0, yes/no, on/off, in any case; empty is false.",
                        "schema": {
                            "type": "string",
                            "pattern": flag_pattern(),
                            "default": "false",
                            "examples": ["true", "false"],
                        },
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"oneOf": [ref("Passenger"), ref("Passengers")]},
                        },
                        "text/csv": {
                            "schema": {
                                "type": "string",
                                "minLength": 1,
                                "description": "A header line of competition field names (Pclass and Sex "
                                "required; a Survived column is ignored), then one passenger a line; an empty "
                                "cell means omitted.",
                            },
                            "example": "PassengerId,Pclass,Name,Sex,Age,SibSp,Parch,Ticket,Fare,Cabin,Embarked\n"
                            '892,3,"Kelly, Mr. James",male,34.5,0,0,330911,7.8292,,Q\n',
                        },
                    },
                },
                "responses": {
                    "200": {
                        "description": "The predictions, in input order.",
                        "headers": {
                            "X-Model-Version": {
                                "description": "The model that answered.",
                                "required": True,
                                "schema": {"type": "string"},
                            }
                        },
                        "content": {
                            "application/json": {"schema": ref("PredictResponse")},
                            "text/csv": {"schema": {"type": "string"}, "example": "PassengerId,Survived\n892,0\n"},
                        },
                    },
                    **{str(status): error_response(status) for status in (400, 401, 413, 415, 422)},
                    **limited,
                    "501": error_response(
                        501,
                        "explain=true, and the loaded model cannot explain its answers; or a Transfer-Encoding "
                        "other than chunked.",
                    ),
                    "503": error_response(503),
                },
            },
        },
        "/api/outcomes": {
            "post": {
                "operationId": "record_outcomes",
                "summary": "Record what really happened to predicted passengers",
                "description": "One outcome or an array of them (at most MAX_ROWS), each naming a prediction by "
                "its id. All or nothing: an unknown id (422) or an outcome that contradicts the one recorded (409) "
                "stores none. Sending a recorded outcome again changes nothing (`unchanged`).",
                "security": OPTIONAL_KEY,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    ref("Outcome"),
                                    {"type": "array", "items": ref("Outcome"), "minItems": 1, "maxItems": max_rows},
                                ]
                            },
                        },
                    },
                },
                "responses": {
                    "200": _json(ref("OutcomesRecorded"), "Every outcome, recorded now or already."),
                    "400": error_response(400, "Malformed JSON, neither an object nor an array, or an empty array."),
                    "401": error_response(401),
                    "409": error_response(
                        409,
                        "An outcome differs from the one already recorded; nothing was stored.",
                        schema="FieldErrors",
                    ),
                    "413": error_response(413, "More than MAX_ROWS outcomes, or a body over MAX_CONTENT_LENGTH bytes."),
                    "415": error_response(415, JSON_ONLY),
                    "422": error_response(
                        422,
                        "An outcome is invalid or names no prediction: `errors` lists every "
                        "problem; nothing was stored.",
                    ),
                    **limited,
                    "503": error_response(503, "The database is unavailable; nothing was stored: send them again."),
                },
            },
        },
        "/api/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness: the process answers",
                "description": "Never needs a key.",
                "responses": {"200": _json(ref("Health"), "The process answers.")},
            },
        },
        "/api/ready": {
            "get": {
                "operationId": "ready",
                "summary": "Readiness: the model, the database and the recorder's backlog",
                "description": "200 while predictions are answered (also when the database fails: they are kept "
                "in the spool, status degraded); 503 when no model is loaded. Never needs a key.",
                "responses": {
                    "200": _json(ref("Ready"), "Predictions are answered (status ready or degraded)."),
                    "503": _json(
                        ref("Ready"),
                        "Not ready: no model is loaded (model.error says why), or the spool refuses rows "
                        "(spool.error says why).",
                    ),
                },
            },
        },
        "/api/model": {
            "get": {
                "operationId": "model_card",
                "summary": "The served model's card, its accuracy on recorded outcomes, and every version",
                "security": OPTIONAL_KEY,
                "responses": {
                    "200": _json(
                        ref("ModelCard"),
                        "Version, training data, library versions, CV metrics, features, outcomes, versions.",
                    ),
                    "401": error_response(401),
                    "503": error_response(503, "No usable model is loaded; the message says why."),
                },
            },
        },
        "/api/model/activate": {
            "post": {
                "operationId": "activate_model",
                "summary": "Serve another registered version (admin)",
                "description": "An admin action: it always needs a key from ADMIN_API_KEYS. The worker that "
                "answers serves the version at once, the others within MODEL_CHECK_SECONDS (with 0, once "
                "restarted).",
                "security": ADMIN_KEY,
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref("Activation")}}},
                "responses": {
                    "200": _json(ref("Activated"), "The version is active."),
                    "400": error_response(400, "Malformed JSON, or not a JSON object."),
                    "401": error_response(401, "No key, or an unknown one."),
                    "403": error_response(403, "The key is not an admin key, or no admin key is configured."),
                    "404": error_response(404, "No such version in the registry."),
                    "409": error_response(409, "MODEL_DIR is a single model folder, not a registry of versions."),
                    "415": error_response(415, JSON_ONLY),
                    "422": error_response(
                        422, "The body is invalid, or the version cannot be served (the message says why)."
                    ),
                    **limited,
                },
            },
        },
        "/api/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "description": "Never needs a key. /docs shows it as a page.",
                "responses": {
                    "200": _json(
                        {"type": "object", "required": ["openapi", "info", "paths"]},
                        "The OpenAPI 3.1 document of /api.",
                    )
                },
            },
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (not under /api: never needs a key)",
                "description": "The Prometheus text format; `Accept: application/openmetrics-text` answers "
                "OpenMetrics.",
                "responses": {
                    "200": {
                        "description": "Counters, histograms and gauges of every worker.",
                        "content": {
                            "text/plain": {"schema": {"type": "string"}},
                            "application/openmetrics-text": {"schema": {"type": "string"}},
                        },
                    },
                },
            },
        },
    }


def build_spec(*, max_rows: int, version: str) -> dict[str, Any]:
    """The whole OpenAPI document; ``max_rows`` is the app's MAX_ROWS, ``version`` the package's."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "titanic-web API",
            "version": version,
            "summary": "Titanic survival predictions; every prediction is stored.",
            "description": "Every error under /api/ is JSON (`code`, `error`, `message`; 422 adds `errors` and "
            "`error_count`), never an HTML page and never a stack trace. A method a route does not take answers "
            "405 with an Allow header; an unknown /api/ path answers 404. Keys: none are needed while the server "
            "has no API_KEYS; once it has, every /api route but health, ready and this document needs one, sent "
            "as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Activating a model always needs an admin key. "
            "Every POST counts against RATE_LIMIT per client (429 with Retry-After beyond it).",
        },
        "paths": _paths(max_rows),
        "components": {
            "schemas": {**_prediction_schemas(max_rows), **_status_schemas(), **_error_schemas()},
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`Authorization: Bearer <key>`: a key from API_KEYS (or ADMIN_API_KEYS).",
                },
                "apiKeyHeader": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Key",
                    "description": "The same key in an X-API-Key header.",
                },
            },
        },
    }
