"""The OpenAPI document (webapp/openapi.json) is valid OpenAPI 3.1 and describes exactly the routes the app serves."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from importlib import resources
from typing import Any

import jsonschema_rs
import pytest
from flask import Flask
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from webapp import errors, http

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Flask answers HEAD for every GET and OPTIONS for every rule by itself; the spec lists what a view implements.
AUTOMATIC_METHODS = {"head", "options"}
# Werkzeug's "<id:user_id>" (converter:name) or "<user_id>" becomes OpenAPI's "{user_id}".
_RULE_ARGUMENT = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")


@pytest.fixture(scope="module")
def raw_document() -> bytes:
    return resources.files("webapp").joinpath("openapi.json").read_bytes()


@pytest.fixture(scope="module")
def document(raw_document: bytes) -> dict[str, Any]:
    return json.loads(raw_document)


def served_operations(app: Flask) -> set[tuple[str, str]]:
    """(path, method) for every route the app serves, spelled the OpenAPI way."""
    operations = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = _RULE_ARGUMENT.sub(r"{\1}", rule.rule)
        operations |= {(path, method.lower()) for method in rule.methods or ()} - {
            (path, method) for method in AUTOMATIC_METHODS
        }
    return operations


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method) for path, item in document["paths"].items() for method in item if method in HTTP_METHODS
    }


def test_every_served_route_is_documented(app: Flask, document: dict[str, Any]) -> None:
    undocumented = served_operations(app) - documented_operations(document)
    assert not undocumented, f"routes without an entry in webapp/openapi.json: {sorted(undocumented)}"


def test_every_documented_operation_is_served(app: Flask, document: dict[str, Any]) -> None:
    unserved = documented_operations(document) - served_operations(app)
    assert not unserved, f"webapp/openapi.json documents operations no route serves: {sorted(unserved)}"


def test_route_comparison_sees_a_route_added_without_a_spec_entry(app: Flask, document: dict[str, Any]) -> None:
    # Guards the two tests above against comparing nothing: a new route must show up as undocumented.
    app.add_url_rule("/test-only/<id:thing_id>/parts", "test_only", lambda thing_id: "", methods=["PUT"])
    assert served_operations(app) - documented_operations(document) == {("/test-only/{thing_id}/parts", "put")}


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    errors_found = [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in OPENAPI_31_VALIDATOR.iter_errors(document)]
    assert not errors_found, "\n".join(errors_found)


def test_every_schema_in_the_document_is_valid_json_schema_2020_12(document: dict[str, Any]) -> None:
    # The OpenAPI meta-schema above does not look inside Schema Objects; the 2020-12 meta-schema does.
    schemas = list(_schema_objects(document))
    assert len(schemas) > 20  # the walk found them, rather than passing vacuously
    for where, schema in schemas:
        try:
            jsonschema_rs.meta.validate(schema)
        except jsonschema_rs.ValidationError as exc:
            pytest.fail(f"{where}: {exc}")


def test_every_pattern_compiles_as_python_reads_it(document: dict[str, Any]) -> None:
    # The app validates with Python's re; a pattern it cannot read would describe nothing.
    patterns = [value for key, value in _walk(document) if key == "pattern"]
    assert patterns
    for pattern in patterns:
        re.compile(pattern)


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    for _key, ref in (item for item in _walk(document) if item[0] == "$ref"):
        assert ref.startswith("#/"), f"only local references are used: {ref}"
        node: Any = document
        for part in ref[2:].split("/"):
            assert isinstance(node, dict) and part in node, f"unresolved reference {ref}"
            node = node[part]


def test_every_error_code_the_service_can_send_is_documented(raw_document: bytes) -> None:
    codes = {cls.code for cls in _subclasses(errors.DomainError)} | set(http.HTTP_CODES.values())
    codes.discard("error")  # DomainError's own placeholder; only subclasses are raised
    # Answered for any route by Flask itself (unknown method); stated in info.description and docs/api.md.
    codes.discard("method_not_allowed")
    missing = sorted(code for code in codes if f'"{code}"' not in raw_document.decode())
    assert not missing, f"error codes missing from webapp/openapi.json: {missing}"


def test_get_openapi_json_serves_the_file_byte_for_byte(client, raw_document: bytes) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_data() == raw_document


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _schema_objects(document: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every top-level Schema Object: components.schemas, parameter, header and media type schemas."""
    for name, schema in document["components"]["schemas"].items():
        yield f"components/schemas/{name}", schema
    for key, value in _walk(document):
        if key in ("parameters", "headers") and isinstance(value, (dict, list)):
            items = value.values() if isinstance(value, dict) else value
            for item in items:
                if isinstance(item, dict) and "schema" in item:
                    yield f"{key}/{item.get('name', '?')}", item["schema"]
        if key == "content" and isinstance(value, dict):
            for media_type, media in value.items():
                if "schema" in media:
                    yield f"content/{media_type}", media["schema"]


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)
