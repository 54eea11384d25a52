"""python -m webapp: main(argv, environ) returns exit codes; config errors are one readable message."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from webapp.cli import main
from webapp.postgres.connection import connection_failure

# A child process must not see the developer's own settings (or a .env above its folder).
_CLEAN_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1"}


def test_config_errors_exit_1_with_every_problem_and_no_password():
    stderr = io.StringIO()
    code = main(["check"], {"DATABASE_URL": "mysql://app:hunter2@db/x", "REQUEST_TIMEOUT": "-3"}, stderr)
    text = stderr.getvalue()
    assert code == 1
    assert "DATABASE_URL" in text and "REQUEST_TIMEOUT" in text
    assert "hunter2" not in text and "Traceback" not in text


@pytest.mark.parametrize("url, reason", [
    ("postgresql://app:hunter2@127.0.0.1:1/x", "connection refused"),
    ("postgresql://app:hunter2@no-such-host.invalid/x", "DNS"),
    ("postgresql://no_such_role:hunter2@{server}/postgres", "authentication failed"),
])
def test_check_says_why_the_database_is_unreachable_without_its_password(url: str, reason: str, server_url: str):
    stderr = io.StringIO()
    code = main(["check"], {"DATABASE_URL": url.format(server=server_url.split("@")[-1].split("/")[0])}, stderr)
    assert code == 1
    [line] = stderr.getvalue().splitlines()
    assert line.startswith("error: cannot connect to postgresql://") and reason in line
    assert "hunter2" not in line


@pytest.mark.parametrize("message, reason", [
    ('connection to server at "10.0.0.1", port 5432 failed: Connection refused', "connection refused"),
    ("connection timeout expired", "timeout"),
    ('could not translate host name "db" to address: Name or service not known', "DNS"),
    ('connection to server at "db" failed: FATAL:  password authentication failed for user "app"', "authentication"),
    ('connection to server at "db" failed: FATAL:  no pg_hba.conf entry for host "10.0.0.9"', "authentication"),
    ('connection to server at "db" failed: FATAL:  database "shop" does not exist', "database does not exist"),
])
def test_a_connection_failure_is_named_from_libpqs_message(message: str, reason: str):
    assert reason in connection_failure(Exception(message))


def test_help_describes_each_command_and_the_variables_it_reads(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"], {})
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert all(command in text for command in ("migrate", "check", "serve", "dev", "purge-idempotency-keys"))
    assert ".env" in text
    with pytest.raises(SystemExit):
        main(["migrate", "--help"], {})
    assert ("Reads: DATABASE_URL, MIGRATION_LOCK_TIMEOUT, MIGRATION_ATTEMPTS, MIGRATION_STATEMENT_TIMEOUT, "
            "LOG_LEVEL, LOG_FORMAT.") in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["serve", "--help"], {})
    text = " ".join(capsys.readouterr().out.split())
    assert "WEB_CONCURRENCY" in text and "REQUEST_TIMEOUT" in text and "PRESTOP_SECONDS" in text


def test_a_password_libpq_cannot_parse_stops_migrate_before_it_connects_and_is_never_shown():
    stderr = io.StringIO()
    assert main(["migrate"], {"DATABASE_URL": "postgresql://app:hunter2%zz@127.0.0.1:1/x"}, stderr) == 1
    assert "DATABASE_URL" in stderr.getvalue() and "hunter2" not in stderr.getvalue()


def test_check_and_migrate_succeed_against_the_test_database(database_url):
    assert main(["check"], {"DATABASE_URL": database_url}, io.StringIO()) == 0
    assert main(["migrate"], {"DATABASE_URL": database_url}, io.StringIO()) == 0


def test_every_entry_point_reads_dotenv_the_same_way_and_the_environment_wins(tmp_path: Path):
    (tmp_path / ".env").write_text("DATABASE_URL=mysql://from-dotenv/x\nLOG_LEVEL=loud\n")
    folder = tmp_path / "sub"  # the nearest .env from the working directory upwards, as Flask's CLI finds it
    folder.mkdir()
    webapp = subprocess.run([sys.executable, "-m", "webapp", "check"], env={**_CLEAN_ENV, "LOG_LEVEL": "info"},
                            cwd=folder, capture_output=True, text=True, timeout=30)
    flask = subprocess.run([sys.executable, "-m", "flask", "--app", "webapp", "routes"],
                           env={**_CLEAN_ENV, "LOG_LEVEL": "info"}, cwd=folder, capture_output=True, text=True,
                           timeout=30)
    for done in (webapp, flask):
        assert done.returncode == 1
        assert "DATABASE_URL: must be a postgres:// or postgresql:// URL" in done.stderr  # read from .env
        assert "LOG_LEVEL" not in done.stderr  # set in the environment: the environment wins
    skipped = subprocess.run([sys.executable, "-m", "webapp", "check"], env={**_CLEAN_ENV, "FLASK_SKIP_DOTENV": "1"},
                             cwd=folder, capture_output=True, text=True, timeout=30)
    assert skipped.returncode == 1 and "Traceback" not in skipped.stderr
    assert "DATABASE_URL: Environment variable not set." in skipped.stderr


def test_the_flask_cli_without_database_url_prints_one_line_and_no_traceback(tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "webapp", "routes"], env=_CLEAN_ENV, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["Error: invalid configuration: DATABASE_URL: Environment variable not set."]


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


def test_a_successful_check_logs_the_database_without_its_password(database_url: str, capsys):
    # Trust authentication ignores the password, so the check succeeds and writes its log line.
    # Local Postgres is "postgresql://postgres@...", the embedded one "postgresql://postgres:@...".
    with_password = re.sub(r"^postgresql://postgres:?@", "postgresql://postgres:hunter2-secret@", database_url)
    assert with_password != database_url, "the test database URL has no user@ part to add a password to"
    assert main(["check"], {"DATABASE_URL": with_password}, io.StringIO()) == 0
    logged = capsys.readouterr().out
    assert "configuration ok" in logged
    assert "hunter2-secret" not in logged and "***" in logged


# Each password holds a character that ends or splits part of a URL; libpq accepts every URL here.
_MISREAD_URLS = ["postgres://u:p@ss@w0rd@127.0.0.1:1/x", "postgres://u:p:ss/w0rd@127.0.0.1:1/x"]
_ENCODED_URL = "postgres://u:p%40ss%2Fw0rd%3A%25@127.0.0.1:1/x"  # the same characters, percent-encoded


@pytest.mark.parametrize("command", ["check", "migrate"])
@pytest.mark.parametrize("url", _MISREAD_URLS)
def test_a_password_libpq_would_misread_is_refused_by_the_real_cli_and_never_shown(command: str, url: str,
                                                                                     tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "webapp", command], env={**_CLEAN_ENV, "DATABASE_URL": url},
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1
    assert "DATABASE_URL" in done.stderr and "@ as %40" in done.stderr and "Traceback" not in done.stderr
    assert "w0rd" not in done.stderr and "ss@" not in done.stderr and "p:ss" not in done.stderr


@pytest.mark.parametrize("command", ["check", "migrate"])
def test_an_encoded_password_never_appears_in_the_real_clis_connection_error(command: str, tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "webapp", command],
                          env={**_CLEAN_ENV, "DATABASE_URL": _ENCODED_URL},
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "refused" in done.stderr.lower()
    output = done.stdout + done.stderr
    assert "w0rd" not in output and "p%40ss" not in output and "p@ss" not in output
    if command == "check":  # check names the database it tried, masked
        assert "postgres://u:***@127.0.0.1:1/x" in done.stderr or "postgresql://u:***@127.0.0.1:1/x" in done.stderr
