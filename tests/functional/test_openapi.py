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
from hypothesis import given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from webapp.domain import errors
from webapp.web import errors as http
from webapp.web.parsing import MAX_ID, parse_new_order, parse_new_product, parse_new_user

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
    return {(path, method) for path, item in document["paths"].items() for method in item if method in HTTP_METHODS}


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
    errors_found = [
        f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in OPENAPI_31_VALIDATOR.iter_errors(document)
    ]
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


# --- The request schemas accept exactly what webapp/validation.py accepts --------------------------------
# schemathesis judges the app by the document, so a schema looser or stricter than the code is a false alarm or a
# blind spot. These compare the two directly, field by field, on the edges: whitespace str.strip() removes (and
# what it does not), NUL, lengths around each limit, integers around each bound, 5.0 versus 5, wrong types.

_PYTHON_WHITESPACE = [chr(c) for c in range(0x110000) if chr(c).isspace()]
_NOT_PYTHON_WHITESPACE = ["\ufeff", "\u180e", "\u200b"]  # whitespace to other regex engines, not to str.strip()


def _text_edges(limit: int) -> list[Any]:
    return [
        "",
        "a",
        " a ",
        "a b",
        "\x00",
        "a\x00b",
        " \x00 ",
        "\x1ca\x1f",
        "\u3000a\u2028",
        "é中",
        "🙂",
        *_PYTHON_WHITESPACE,
        *(w + "a" + w for w in _PYTHON_WHITESPACE),
        *(w + "a" for w in _NOT_PYTHON_WHITESPACE),
        "a" * limit,
        "a" * (limit + 1),
        " " + "a" * limit + "\n",
        "a" + " " * (limit - 2) + "b",
        "a" + " " * (limit - 1) + "b",
        "a\n" + "b" * (limit - 2),
        None,
        1,
        True,
        ["a"],
        {"a": 1},
    ]


_EMAIL_EDGES = [
    *_text_edges(254),
    "a@b.c",
    " a@b.c\n",
    "a@b",
    "a@@b.c",
    "@b.c",
    "a@.c",
    "a@b.",
    "a b@c.d",
    "a@b c.d",
    "é@ü.中",
    "a@b.c\x00",
    "a\u3000@b.c",
    "\ufeffa@b.c",
    "a" * 250 + "@b.c",
    "a" * 251 + "@b.c",
    " " + "a" * 250 + "@b.c ",
    *(w + "a@b.c" + w for w in _PYTHON_WHITESPACE),
]
_SKU_EDGES = [
    *_text_edges(64),
    "A",
    "a.b-c_D9",
    ".a",
    "-a",
    "_a",
    "a:b",
    "aé",
    "١",
    "A" * 64 + " ",
    "A" * 65,
    *(w + "A" + w for w in _PYTHON_WHITESPACE),
]


def _integer_edges(low: int, high: int) -> list[Any]:
    return [
        low - 1,
        low,
        low + 1,
        high - 1,
        high,
        high + 1,
        float(low),
        float(high),
        low + 0.5,
        -0.0,
        1e300,
        2**64,
        -(2**64),
        True,
        False,
        None,
        "1",
        [1],
        {"n": 1},
    ]


_MAX_INT = 2**31 - 1
# (schema, parse function, a valid body, {field: edge values to put in that field, one at a time})
_FIELD_CASES: list[tuple[str, Any, dict[str, Any], dict[str, list[Any]]]] = [
    (
        "NewUser",
        parse_new_user,
        {"name": "Ada", "email": "ada@example.org"},
        {"name": _text_edges(200), "email": _EMAIL_EDGES},
    ),
    (
        "NewProduct",
        parse_new_product,
        {"sku": "BOOK-1", "name": "Book", "price_cents": 100, "stock": 5},
        {
            "sku": _SKU_EDGES,
            "name": _text_edges(200),
            "price_cents": _integer_edges(0, 10**12),
            "stock": _integer_edges(0, _MAX_INT),
        },
    ),
    (
        "NewOrder",
        parse_new_order,
        {"user_id": 1, "items": [{"product_id": 1, "quantity": 1}]},
        {
            "user_id": _integer_edges(1, MAX_ID),
            "items": [
                [],
                [{"product_id": i, "quantity": 1} for i in range(1, 51)],
                [{"product_id": i, "quantity": 1} for i in range(1, 52)],
                "x",
                None,
                [None],
                [[1]],
                [{}],
                [{"product_id": 1}],
                [{"quantity": 1}],
                [{"product_id": 1, "quantity": 1, "price": 1}],
            ],
        },
    ),
    (
        "NewOrder",
        parse_new_order,
        {"user_id": 1, "items": [{"product_id": 1, "quantity": 1}]},
        {"items.0.product_id": _integer_edges(1, MAX_ID), "items.0.quantity": _integer_edges(1, 10_000)},
    ),
]


def _with(body: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    """A deep copy of body with the dotted field set to value."""
    body = json.loads(json.dumps(body))
    *parents, last = field.split(".")
    node: Any = body
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return body


def _accepts(parse: Any, body: Any) -> bool:
    try:
        parse(body)
    except errors.ValidationFailed:
        return False
    return True


def _validator(document: dict[str, Any], name: str) -> Any:
    return jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{name}", "components": document["components"]})


def _disagreements(document: dict[str, Any], name: str, parse: Any, bodies: list[Any]) -> list[str]:
    validator = _validator(document, name)
    return [
        f"{body!r:.120}: schema {'accepts' if valid else 'refuses'}, code {'accepts' if accepted else 'refuses'}"
        for body in bodies
        if (valid := validator.is_valid(body)) != (accepted := _accepts(parse, body))
    ]


@pytest.mark.parametrize(
    ("name", "parse", "valid", "field", "values"),
    [
        pytest.param(name, parse, valid, field, values, id=f"{name}.{field}")
        for name, parse, valid, edges in _FIELD_CASES
        for field, values in edges.items()
    ],
)
def test_request_schema_and_validation_agree_on_every_edge_value(
    document: dict[str, Any], name: str, parse: Any, valid: dict[str, Any], field: str, values: list[Any]
) -> None:
    assert _accepts(parse, valid) and _validator(document, name).is_valid(valid), "the base body must be valid"
    bodies = [_with(valid, field, value) for value in values]
    assert not _disagreements(document, name, parse, bodies)


@pytest.mark.parametrize(
    ("name", "parse", "valid"), [pytest.param(n, p, v, id=n) for n, p, v, _ in _FIELD_CASES[:3]]
)
def test_request_schema_and_validation_agree_on_the_body_shape(
    document: dict[str, Any], name: str, parse: Any, valid: dict[str, Any]
) -> None:
    missing = [{k: v for k, v in valid.items() if k != field} for field in valid]
    bodies = [valid, {**valid, "extra": 1}, {}, [], [valid], "x", 1, None, *missing]
    assert not _disagreements(document, name, parse, bodies)


def test_the_one_order_rule_the_schema_cannot_state_is_a_duplicate_product() -> None:
    # JSON Schema has no "unique by product_id"; the code refuses it, and schemathesis is told so (test_schemathesis).
    lines = [{"product_id": 1, "quantity": 1}, {"product_id": 1, "quantity": 2}]
    assert not _accepts(parse_new_order, {"user_id": 1, "items": lines})


_SOME_CHARS = st.one_of(
    st.sampled_from(_PYTHON_WHITESPACE + _NOT_PYTHON_WHITESPACE + list("aZ09._-@\x00")),
    st.characters(exclude_categories=["Cs"]),
)  # lone surrogates are not JSON Schema strings


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    name=st.text(_SOME_CHARS, max_size=8), email=st.text(_SOME_CHARS, max_size=12), sku=st.text(_SOME_CHARS, max_size=8)
)
def test_request_schema_and_validation_agree_on_arbitrary_text(
    document: dict[str, Any], name: str, email: str, sku: str
) -> None:
    user, product = _FIELD_CASES[0][2], _FIELD_CASES[1][2]
    assert not _disagreements(
        document, "NewUser", parse_new_user, [_with(user, "name", name), _with(user, "email", email)]
    )
    assert not _disagreements(document, "NewProduct", parse_new_product, [_with(product, "sku", sku)])


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


def _subclasses(cls: type[errors.DomainError]) -> Iterator[type[errors.DomainError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)
