"""The API's own description: /api/openapi.json, and /docs, a page rendered from it on the server."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, current_app, jsonify, render_template
from markupsafe import Markup, escape

from titanic_web.api import bp
from titanic_web.api.spec import build_spec

#: The human-readable page lives outside /api/: it is HTML, with HTML error pages.
page_bp = Blueprint("docs", __name__)

#: HTTP methods in the order the page lists them.
METHODS = ("get", "post", "put", "patch", "delete")


def current_spec() -> dict[str, Any]:
    """The OpenAPI document for this app's settings (MAX_ROWS bounds an array of passengers)."""
    from titanic_web import __version__

    return build_spec(max_rows=int(current_app.config["MAX_ROWS"]), version=__version__)


@bp.get("/openapi.json")
def openapi() -> Any:
    """The OpenAPI 3.1 document of every /api route."""
    return jsonify(current_spec())


class SchemaReader:
    """Reads the schemas of one document for the page: follows $ref, says types and rules in words.

    A named schema (a $ref) is shown as a link to its own section, so each is described once.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        """The schema a local $ref points to, else the schema itself."""
        for _ in range(20):  # a chain of references, never a loop in this document
            if "$ref" not in schema:
                break
            node: Any = self.spec
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            schema = node
        return schema

    def type_html(self, schema: dict[str, Any]) -> Markup:
        """A short type with links to named schemas: 'integer or null', 'array of <a>Passenger</a>'."""
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            return Markup('<a href="#schema-{0}">{0}</a>').format(name)
        if "oneOf" in schema:
            return Markup(" | ").join(self.type_html(s) for s in schema["oneOf"])
        if "allOf" in schema:
            base = [self.type_html(s) for s in schema["allOf"] if "$ref" in s]
            narrowed = [
                Markup("<code>{}</code> {}").format(name, self.type_html(sub))
                for part in schema["allOf"]
                if "$ref" not in part
                for name, sub in part.get("properties", {}).items()
            ]
            return Markup(" and ").join(base) + (Markup(" with ") + Markup(", ").join(narrowed) if narrowed else "")
        if "const" in schema:
            return Markup("always <code>{}</code>").format(literal(schema["const"]))
        kinds = schema.get("type", "any")
        kinds = kinds if isinstance(kinds, list) else [kinds]
        text = Markup(" or ").join(kinds)
        if kinds == ["array"] and isinstance(schema.get("items"), dict):
            return Markup("array of ") + self.type_html(schema["items"])
        if kinds == ["object"] and isinstance(schema.get("additionalProperties"), dict):
            return Markup("map of name to ") + self.type_html(schema["additionalProperties"])
        return text

    def rules(self, schema: dict[str, Any]) -> list[Markup]:
        """The schema's own constraints in words: choices, ranges, lengths, formats, patterns, default."""
        out: list[Any] = []
        if "enum" in schema:
            out.append("one of " + ", ".join(literal(v) for v in schema["enum"]))
        for key, words, unit in (
            ("minimum", "at least", ""),
            ("maximum", "at most", ""),
            ("minLength", "at least", " characters"),
            ("maxLength", "at most", " characters"),
            ("minItems", "at least", " items"),
            ("maxItems", "at most", " items"),
            ("minProperties", "at least", " entries"),
        ):
            if key in schema:
                out.append(f"{words} {schema[key]}{unit}")
        if "format" in schema:
            out.append(f"format {schema['format']}")
        if "examples" in schema and "pattern" in schema:
            out.append("e.g. " + ", ".join(literal(v) for v in schema["examples"]))
        if schema.get("additionalProperties") is False:
            out.append("no other fields")
        if "default" in schema:
            out.append(f"default {literal(schema['default'])}")
        if "pattern" in schema:
            if len(schema["pattern"]) <= 40:
                out.append(Markup("pattern <code>{}</code>").format(schema["pattern"]))
            else:  # the exact rule of a text field: long, so folded away (last: it is a block)
                out.append(
                    Markup("<details><summary>pattern</summary><code>{}</code></details>").format(schema["pattern"])
                )
        return [escape(rule) for rule in out]

    def properties(self, schema: dict[str, Any]) -> list[tuple[str, dict[str, Any], bool]]:
        """(name, schema, required) of an inline object's fields, in document order."""
        if "$ref" in schema:
            return []
        required = set(schema.get("required", ()))
        return [(name, sub, name in required) for name, sub in schema.get("properties", {}).items()]

    def nested(self, schema: dict[str, Any]) -> dict[str, Any] | None:
        """The inline object to show in its own table below a field: the field's, or its array items'."""
        if self.properties(schema):
            return schema
        items = schema.get("items")
        if schema.get("type") == "array" and isinstance(items, dict) and self.properties(items):
            return items
        return None

    @staticmethod
    def example(value: Any) -> str:
        """An example value as indented JSON, in the document's key order."""
        return json.dumps(value, indent=2, ensure_ascii=False)

    @staticmethod
    def text(words: str | None) -> Markup:
        """Description text with its `code` spans as <code>."""
        parts = escape(words or "").split("`")
        return Markup("").join(
            Markup("<code>{}</code>").format(part) if odd else part
            for odd, part in ((i % 2, p) for i, p in enumerate(parts))
        )


def literal(value: Any) -> str:
    """A JSON value as the document writes it: null, true, "text", 3."""
    return json.dumps(value)


@page_bp.get("/docs")
def api_docs() -> Any:
    """The API reference, rendered on the server from the same document as /api/openapi.json."""
    spec = current_spec()
    operations = [
        (path, method, item[method]) for path, item in spec["paths"].items() for method in METHODS if method in item
    ]
    return render_template("api_docs.html", spec=spec, operations=operations, reader=SchemaReader(spec))
