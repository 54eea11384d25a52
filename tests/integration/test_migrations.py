"""Migrations apply once each, in order, recorded, and two concurrent runs are safe."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import psycopg
import pytest

from tests.conftest import scratch_database
from webapp.postgres.migration_files import migration_files
from webapp.postgres.migrations import migrate


@pytest.fixture
def empty_database(server_url: str):
    with scratch_database(server_url, "webapp_mig", migrated=False) as url:
        yield url


def test_every_sql_file_has_a_header_comment_and_a_unique_number():
    files = migration_files()
    assert [f.name[:4] for f in files] == sorted({f.name[:4] for f in files})
    for path in files:
        assert path.read_text().startswith("-- "), f"{path.name} needs a header comment"


def test_migrate_applies_all_files_once_and_records_them(empty_database: str):
    first = migrate(empty_database)
    second = migrate(empty_database)
    assert first == [f.name for f in migration_files()]
    assert second == []
    with psycopg.connect(empty_database) as conn:
        recorded = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert recorded == first


def test_two_concurrent_migrate_runs_apply_each_file_exactly_once(empty_database: str):
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(empty_database))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert sorted(len(r) for r in results) == [0, len(migration_files())]


def test_a_failing_file_applies_entirely_or_not_at_all_and_the_files_before_it_stay(
    empty_database: str, tmp_path: Path
):
    (tmp_path / "0001_ok.sql").write_text("-- ok\nCREATE TABLE a (id int);\n")
    (tmp_path / "0002_broken.sql").write_text("-- broken\nCREATE TABLE b (id int);\nSELECT no_such_function();\n")
    with pytest.raises(psycopg.errors.UndefinedFunction):
        migrate(empty_database, tmp_path)
    with psycopg.connect(empty_database) as conn:
        tables = conn.execute("SELECT to_regclass('a') IS NOT NULL, to_regclass('b') IS NOT NULL").fetchone()
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert tables == (True, False) and versions == ["0001_ok.sql"]  # the next run starts at 0002


def test_a_failure_after_earlier_runs_keeps_what_they_committed_and_adds_nothing_of_its_own(
    empty_database: str, tmp_path: Path
):
    (tmp_path / "0001_ok.sql").write_text("-- ok\nCREATE TABLE a (id int);\n")
    assert migrate(empty_database, tmp_path) == ["0001_ok.sql"]
    (tmp_path / "0002_ok_too.sql").write_text("-- fine alone\nCREATE TABLE b (id int);\n")
    (tmp_path / "0003_broken.sql").write_text("-- broken\nALTER TABLE a ADD COLUMN x int;\nSELECT 1/0;\n")
    with pytest.raises(psycopg.errors.DivisionByZero):
        migrate(empty_database, tmp_path)
    with psycopg.connect(empty_database) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
        columns = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'a'"
        )]
    assert versions == ["0001_ok.sql", "0002_ok_too.sql"] and columns == ["id"]


def test_a_missing_sql_folder_fails_before_touching_the_database(empty_database: str, tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        migrate(empty_database, tmp_path / "nowhere")
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)


def test_0004_moves_each_remembered_key_under_its_user_and_drops_the_ones_it_cannot_attribute(
    empty_database: str, tmp_path: Path
):
    for path in migration_files():
        if path.name < "0004":
            shutil.copy(path, tmp_path)
    migrate(empty_database, tmp_path)  # the schema as a release before 0004 left it, with its data
    with psycopg.connect(empty_database, autocommit=True) as conn:
        user = conn.execute("INSERT INTO users (name, email) VALUES ('Ann', 'a@example.org') RETURNING id").fetchone()
        order = conn.execute("INSERT INTO orders (user_id, total_cents) VALUES (%s, 0) RETURNING id", user).fetchone()
        assert user is not None and order is not None
        conn.execute(
            "INSERT INTO idempotency_keys (key, request_hash, status_code, response) VALUES "
            "('k-1', 'hash-1', 201, jsonb_build_object('id', %s::bigint, 'user_id', %s::bigint, 'items', '[]'::jsonb)),"
            "('k-2', 'hash-2', 201, '{\"error\": {\"code\": \"conflict\"}}')",  # names no order: dropped
            (order[0], user[0]),
        )
    assert migrate(empty_database)[0] == "0004_idempotency_keys_per_user.sql"
    with psycopg.connect(empty_database, autocommit=True) as conn:
        rows = conn.execute("SELECT user_id, key, request_hash, order_id FROM idempotency_keys").fetchall()
        assert rows == [(user[0], "k-1", "hash-1", order[0])]
        # Keys are per user now: another user may use the same key; one user may not use it twice.
        other = conn.execute("INSERT INTO users (name, email) VALUES ('Bob', 'b@example.org') RETURNING id").fetchone()
        assert other is not None
        conn.execute(
            "INSERT INTO idempotency_keys (user_id, key, request_hash, order_id) VALUES (%s, 'k-1', 'h', %s)",
            (other[0], order[0]),
        )
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO idempotency_keys (user_id, key, request_hash, order_id) VALUES (%s, 'k-1', 'h', %s)",
                (user[0], order[0]),
            )
        with pytest.raises(psycopg.errors.ForeignKeyViolation):  # a key can only name an existing order
            conn.execute(
                "INSERT INTO idempotency_keys (user_id, key, request_hash, order_id) VALUES (%s, 'k-3', 'h', -1)",
                user,
            )


def test_0006_to_0008_backfill_old_order_lines_in_batches_then_make_the_name_not_null(
    empty_database: str, tmp_path: Path
):
    for path in migration_files():
        if path.name < "0006":
            shutil.copy(path, tmp_path)
    migrate(empty_database, tmp_path)  # the schema release A (0005) serves on
    with psycopg.connect(empty_database, autocommit=True) as conn:
        user = conn.execute("INSERT INTO users (name, email) VALUES ('Ann', 'a@example.org') RETURNING id").fetchone()
        apple = conn.execute("INSERT INTO products (sku, name, price_cents, stock) VALUES ('A', 'Apple', 1, 9) "
                             "RETURNING id").fetchone()
        assert user is not None and apple is not None
        for _ in range(2500):  # lines the release before 0005 placed: no name
            order = conn.execute("INSERT INTO orders (user_id, total_cents) VALUES (%s, 1) RETURNING id", user)
            conn.execute("INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents) "
                         "VALUES (%s, %s, 1, 1)", (order.fetchone()[0], apple[0]))  # type: ignore[index]
    assert migrate(empty_database) == ["0006_backfill_order_items_product_name.sql",
                                       "0007_order_items_product_name_checked.sql",
                                       "0008_order_items_product_name_not_null.sql"]
    with psycopg.connect(empty_database, autocommit=True) as conn:
        assert conn.execute("SELECT count(*), count(product_name) FROM order_items").fetchone() == (2500, 2500)
        assert conn.execute("SELECT is_nullable FROM information_schema.columns "
                            "WHERE table_name = 'order_items' AND column_name = 'product_name'").fetchone() == ("NO",)
        with pytest.raises(psycopg.errors.NotNullViolation):  # why a rollback goes back one release only
            conn.execute("INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents) "
                         "SELECT id, %s, 1, 1 FROM orders LIMIT 1", apple)
