"""Migrations apply once each, in order, recorded, and two concurrent runs are safe."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from tests.conftest import scratch_database
from webapp.migrate import migrate, migration_files


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


def test_a_failing_migration_leaves_no_table_no_row_and_no_half_applied_ddl(empty_database: str, tmp_path: Path):
    (tmp_path / "0001_ok.sql").write_text("-- ok\nCREATE TABLE a (id int);\n")
    (tmp_path / "0002_broken.sql").write_text("-- broken\nCREATE TABLE b (id int);\nSELECT no_such_function();\n")
    with pytest.raises(psycopg.Error):
        migrate(empty_database, tmp_path)
    with psycopg.connect(empty_database) as conn:
        tables = conn.execute(
            "SELECT to_regclass('schema_migrations'), to_regclass('a'), to_regclass('b')"
        ).fetchone()
    assert tables == (None, None, None)  # all or nothing: the next run starts from the same state


def test_a_failure_after_earlier_runs_keeps_what_they_committed_and_adds_nothing(empty_database: str, tmp_path: Path):
    (tmp_path / "0001_ok.sql").write_text("-- ok\nCREATE TABLE a (id int);\n")
    assert migrate(empty_database, tmp_path) == ["0001_ok.sql"]
    (tmp_path / "0002_ok_too.sql").write_text("-- fine alone\nCREATE TABLE b (id int);\n")
    (tmp_path / "0003_broken.sql").write_text("-- broken\nALTER TABLE a ADD COLUMN x int;\nSELECT 1/0;\n")
    with pytest.raises(psycopg.errors.DivisionByZero):
        migrate(empty_database, tmp_path)
    with psycopg.connect(empty_database) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
        columns = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'a'"
        )]
        has_b = conn.execute("SELECT to_regclass('b') IS NOT NULL").fetchone()
    assert versions == ["0001_ok.sql"] and columns == ["id"] and has_b == (False,)


def test_a_missing_sql_folder_fails_before_touching_the_database(empty_database: str, tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        migrate(empty_database, tmp_path / "nowhere")
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)
