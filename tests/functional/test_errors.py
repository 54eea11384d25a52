"""Bad input gets one JSON error shape with the right status, changes nothing, and never a 500."""

from __future__ import annotations

import pytest


def assert_error(response, status: int, code: str):
    assert response.status_code == status, response.data
    assert response.mimetype == "application/json"
    error = response.json["error"]
    assert error["code"] == code
    assert error["request_id"] == response.headers["X-Request-ID"]
    assert isinstance(error["message"], str) and "Traceback" not in error["message"]
    return error


def test_malformed_json_is_400(client):
    assert_error(client.post("/users", data="{not json", content_type="application/json"), 400, "malformed_json")


def test_invalid_utf8_is_400(client):
    assert_error(client.post("/users", data=b"\xff\xfe", content_type="application/json"), 400, "malformed_json")


def test_unknown_route_is_404_json(client):
    assert_error(client.get("/no/such/thing"), 404, "not_found")


@pytest.mark.parametrize("path", ["/users/999", "/products/999", "/orders/999", "/users/999/orders"])
def test_missing_resources_are_404(client, path):
    assert_error(client.get(path), 404, "not_found")


@pytest.mark.parametrize("path", ["/users/0", "/users/-1", "/users/99999999999999999999", "/users/abc"])
def test_ids_outside_bigint_are_404_not_a_database_error(client, path):
    assert_error(client.get(path), 404, "not_found")


@pytest.mark.parametrize("path", [
    "/users/%D9%A1",  # Arabic-Indic digit one
    "/users/%EF%BC%91",  # fullwidth digit one
    "/products/%D9%A1",
    "/orders/%D9%A1",
    "/users/%D9%A1/orders",
    "/users/%D9%A1%D9%A2",  # was read as user 12
    "/users/1%D9%A1",  # an ASCII digit, then another script's
])
def test_ids_are_ascii_digits_only_other_unicode_digits_are_404(client, db, path):
    # Every one of them would be found if read as a number: user, product and order 1 (and 11, 12) exist.
    for n in range(1, 13):  # ids 1..12: the fixture restarts the identities
        db.execute("INSERT INTO users (name, email) VALUES ('U', %s)", (f"u{n}@example.org",))
    db.execute("INSERT INTO products (sku, name, price_cents, stock) VALUES ('P1', 'P', 100, 5)")
    assert client.post("/orders", json={"user_id": 1, "items": [{"product_id": 1, "quantity": 1}]}).status_code == 201
    assert [client.get(p).status_code for p in ("/users/1", "/users/12", "/products/1", "/orders/1")] == [200] * 4
    assert_error(client.get(path), 404, "not_found")


def test_wrong_method_is_405_with_allow_header(client):
    response = client.delete("/users")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_body_too_large_is_413_checked_before_reading(client):
    response = client.post("/users", data=b"x" * (65 * 1024), content_type="application/json")
    assert_error(response, 413, "payload_too_large")


def test_wrong_content_type_is_415(client):
    assert_error(client.post("/users", data="name=Ann", content_type="application/x-www-form-urlencoded"),
                 415, "unsupported_media_type")


def test_duplicate_email_is_409(client):
    client.post("/users", json={"name": "Ann", "email": "ann@example.org"})
    assert_error(client.post("/users", json={"name": "Ann", "email": "ann@example.org"}), 409, "email_taken")


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"name", "email"}),
        ({"name": "", "email": "not-an-email"}, {"name", "email"}),
        ({"name": 5, "email": ["x"]}, {"name", "email"}),
        ({"name": "Ann", "email": "ann@example.org", "admin": True}, {"admin"}),
        ({"name": "A" * 201, "email": "ann@example.org"}, {"name"}),
        ([], {"body"}),
    ],
)
def test_invalid_users_are_422_naming_every_bad_field(client, db, body, fields):
    error = assert_error(client.post("/users", json=body), 422, "validation_failed")
    assert set(error["fields"]) == fields
    assert db.execute("SELECT count(*) FROM users").fetchone() == (0,)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": True, "items": [{"product_id": 1, "quantity": 1}]}, "user_id"),
        ({"user_id": 1, "items": []}, "items"),
        ({"user_id": 1, "items": [{"product_id": 1, "quantity": 0}]}, "items.0.quantity"),
        ({"user_id": 1, "items": [{"product_id": 1, "quantity": 1.5}]}, "items.0.quantity"),
        ({"user_id": 1, "items": [{"product_id": 1, "quantity": 1, "price": 0}]}, "items.0.price"),
        ({"user_id": 1, "items": [{"product_id": 1, "quantity": 1}, {"product_id": 1, "quantity": 1}]},
         "items.1.product_id"),
        ({"user_id": 2**63, "items": [{"product_id": 1, "quantity": 1}]}, "user_id"),
    ],
)
def test_invalid_orders_are_422(client, body, field):
    error = assert_error(client.post("/orders", json=body), 422, "validation_failed")
    assert field in error["fields"]


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "after=-1", "after=1e3"])
def test_invalid_pagination_is_422(client, query):
    assert_error(client.get(f"/users?{query}"), 422, "validation_failed")


def test_products_reject_negative_price_and_stock(client):
    error = assert_error(client.post("/products", json={"sku": "A", "name": "A", "price_cents": -1, "stock": -1}),
                         422, "validation_failed")
    assert set(error["fields"]) == {"price_cents", "stock"}


def test_a_bug_of_ours_is_a_logged_500_without_details(app, client, caplog):
    @app.get("/test-only/boom")
    def boom():
        raise RuntimeError("secret internals")

    response = client.get("/test-only/boom")
    error = assert_error(response, 500, "internal_error")
    assert "secret internals" not in response.get_data(as_text=True)
    failures = [r for r in caplog.records if r.levelname == "ERROR" and r.exc_info]
    assert failures and getattr(failures[0], "request_id", None) == error["request_id"]
