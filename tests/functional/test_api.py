"""The API through the real app: users, products, orders, pagination, JSON in and out."""

from __future__ import annotations

import re


def create_user(client, name="Ann", email="ann@example.org"):
    response = client.post("/users", json={"name": name, "email": email})
    assert response.status_code == 201, response.json
    return response.json


def create_product(client, sku="APPLE", stock=10, price=150):
    response = client.post("/products", json={"sku": sku, "name": sku.title(), "price_cents": price, "stock": stock})
    assert response.status_code == 201, response.json
    return response.json


def test_a_created_user_can_be_fetched(client):
    user = create_user(client)
    assert set(user) == {"id", "name", "email", "created_at"}
    response = client.get(f"/users/{user['id']}")
    assert response.status_code == 200 and response.json == user


def test_users_list_with_keyset_pagination(client):
    ids = [create_user(client, f"U{i}", f"u{i}@example.org")["id"] for i in range(5)]
    page = client.get("/users?limit=2").json
    assert [u["id"] for u in page["items"]] == ids[:2] and page["next"] == ids[1]
    page = client.get(f"/users?limit=2&after={page['next']}").json
    assert [u["id"] for u in page["items"]] == ids[2:4]
    page = client.get(f"/users?limit=2&after={page['next']}").json
    assert [u["id"] for u in page["items"]] == ids[4:] and page["next"] is None


def test_default_page_size_is_twenty(client):
    for i in range(21):
        create_user(client, f"U{i}", f"u{i}@example.org")
    page = client.get("/users").json
    assert len(page["items"]) == 20 and page["next"] is not None


def test_a_product_can_be_created_and_fetched(client):
    product = create_product(client)
    assert client.get(f"/products/{product['id']}").json == product


def test_an_order_commits_its_rows_and_its_stock_change_together(client, db):
    user = create_user(client)
    apple, pear = create_product(client, "APPLE", 10, 150), create_product(client, "PEAR", 5, 200)
    response = client.post("/orders", json={"user_id": user["id"], "items": [
        {"product_id": pear["id"], "quantity": 2}, {"product_id": apple["id"], "quantity": 3}]})
    assert response.status_code == 201
    order = response.json
    assert order["total_cents"] == 3 * 150 + 2 * 200
    assert [i["product_id"] for i in order["items"]] == [apple["id"], pear["id"]]  # by product id
    assert client.get(f"/orders/{order['id']}").json == order
    assert db.execute("SELECT stock FROM products ORDER BY id").fetchall() == [(7,), (3,)]


def test_a_users_orders_are_listed(client):
    user = create_user(client)
    product = create_product(client)
    for _ in range(3):
        client.post("/orders", json={"user_id": user["id"], "items": [{"product_id": product["id"], "quantity": 1}]})
    page = client.get(f"/users/{user['id']}/orders?limit=2").json
    assert len(page["items"]) == 2 and page["next"] == page["items"][-1]["id"]
    rest = client.get(f"/users/{user['id']}/orders?after={page['next']}").json
    assert len(rest["items"]) == 1 and rest["next"] is None


def test_insufficient_stock_is_409_naming_the_product_and_changes_nothing(client, db):
    user = create_user(client)
    apple, pear = create_product(client, "APPLE", 10), create_product(client, "PEAR", 1)
    response = client.post("/orders", json={"user_id": user["id"], "items": [
        {"product_id": apple["id"], "quantity": 2}, {"product_id": pear["id"], "quantity": 2}]})
    assert response.status_code == 409
    error = response.json["error"]
    assert error["code"] == "insufficient_stock"
    assert f"product {pear['id']}" in error["message"]
    assert db.execute("SELECT stock FROM products ORDER BY id").fetchall() == [(10,), (1,)]
    assert db.execute("SELECT count(*) FROM orders").fetchone() == (0,)


def test_unknown_user_and_product_are_422_naming_the_field(client):
    user = create_user(client)
    response = client.post("/orders", json={"user_id": user["id"] + 100, "items": [{"product_id": 1, "quantity": 1}]})
    assert response.status_code == 422 and "user_id" in response.json["error"]["fields"]
    response = client.post("/orders", json={"user_id": user["id"], "items": [{"product_id": 999, "quantity": 1}]})
    assert response.status_code == 422 and "items.0.product_id" in response.json["error"]["fields"]


def test_every_response_carries_a_request_id_and_a_sane_client_id_is_kept(client):
    response = client.get("/livez", headers={"X-Request-ID": "trace-abc.123"})
    assert response.headers["X-Request-ID"] == "trace-abc.123"
    response = client.get("/livez", headers={"X-Request-ID": "bad id with spaces"})
    assert response.headers["X-Request-ID"] != "bad id with spaces"
    generated = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{22}", generated)
    assert client.get("/livez").headers["X-Request-ID"] != generated  # unique per request
