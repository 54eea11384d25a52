"""python -m webapp: main(argv, environ) returns exit codes; config errors are one readable message."""

from __future__ import annotations

import io
import subprocess
import sys

from webapp.__main__ import main


def test_config_errors_exit_1_with_every_problem_and_no_password():
    stderr = io.StringIO()
    code = main(["check"], {"DATABASE_URL": "mysql://app:hunter2@db/x", "REQUEST_TIMEOUT": "-3"}, stderr)
    text = stderr.getvalue()
    assert code == 1
    assert "DATABASE_URL" in text and "REQUEST_TIMEOUT" in text
    assert "hunter2" not in text and "Traceback" not in text


def test_check_reports_an_unreachable_database_without_its_password():
    stderr = io.StringIO()
    code = main(["check"], {"DATABASE_URL": "postgresql://app:hunter2@127.0.0.1:1/x"}, stderr)
    assert code == 1
    assert "hunter2" not in stderr.getvalue() and "127.0.0.1" in stderr.getvalue()


def test_check_and_migrate_succeed_against_the_test_database(database_url):
    assert main(["check"], {"DATABASE_URL": database_url}, io.StringIO()) == 0
    assert main(["migrate"], {"DATABASE_URL": database_url}, io.StringIO()) == 0


def test_the_module_exits_with_mains_status_and_prints_no_traceback():
    result = subprocess.run([sys.executable, "-m", "webapp", "check"], env={"PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "DATABASE_URL" in result.stderr and "Traceback" not in result.stderr


def test_purge_deletes_only_idempotency_keys_past_their_retention(database_url, db):
    user = db.execute("INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.org') RETURNING id").fetchone()
    order = db.execute("INSERT INTO orders (user_id, total_cents) VALUES (%s, 0) RETURNING id", user).fetchone()
    db.execute(
        "INSERT INTO idempotency_keys (user_id, key, request_hash, order_id, created_at) VALUES "
        "(%(u)s, 'old-key-1', 'h', %(o)s, now() - interval '25 hours'), (%(u)s, 'new-key-1', 'h', %(o)s, now())",
        {"u": user[0], "o": order[0]},
    )
    assert main(["purge-idempotency-keys"], {"DATABASE_URL": database_url}, io.StringIO()) == 0
    assert db.execute("SELECT key FROM idempotency_keys").fetchall() == [("new-key-1",)]
