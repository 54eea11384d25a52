"""The migration linter: squawk (.squawk.toml, `make lint`) passes sql/ as committed, fails a migration that would
break the release still serving or stall traffic behind a lock (naming the rule), and lets a file through only
with an exemption that says why.

squawk does not ask for a reason; the exemption checks below do. Without the squawk binary (setup.cfg's dev
extra installs it) the squawk tests skip, visibly; under REQUIRE_PGBOUNCER=1 (.ci/run) they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent
CONFIG = PROJECT_DIR / ".squawk.toml"
MIGRATIONS = sorted((PROJECT_DIR / "sql").glob("*.sql"))

# The runner's marker for a file that must run outside a transaction, and squawk's for linting it that way.
NO_TRANSACTION = re.compile(r"^--\s*migrate:\s*no-transaction\s*$", re.MULTILINE)
SQUAWK_NO_TRANSACTION = re.compile(r"^--\s*squawk-disable-assume-in-transaction\b", re.MULTILINE)
# squawk's own exemption comments: `squawk-ignore rule, ...` (this line or the next) and `squawk-ignore-file`.
EXEMPTION = re.compile(r"squawk-ignore(-file)?\b")
# squawk reads `-- squawk-ignore rule -- anything` as the rule list, then a comment: the reason goes there.
REASON = re.compile(r"squawk-ignore(?:-file)?\b[^\n]*?--\s*why:\s*(?P<reason>.*)$")
MIN_REASON_WORDS = 3


def exemptions_without_reason(sql: str) -> list[str]:
    """Each squawk exemption line that does not say why on the same line (`-- why: ...`, a few words at least)."""
    missing = []
    for line in sql.splitlines():
        if not EXEMPTION.search(line):
            continue
        reason = REASON.search(line)
        if reason is None or len(reason.group("reason").split()) < MIN_REASON_WORDS:
            missing.append(line.strip())
    return missing


def transaction_marker_mismatches(sql: str) -> list[str]:
    """Where the runner and the linter would disagree about a file running inside a transaction."""
    runner_outside = bool(NO_TRANSACTION.search(sql))
    squawk_outside = bool(SQUAWK_NO_TRANSACTION.search(sql))
    problems = []
    if runner_outside != squawk_outside:
        problems.append("`-- migrate: no-transaction` and `-- squawk-disable-assume-in-transaction` go together")
    statements = re.sub(r"--[^\n]*", "", sql)  # a comment may mention CONCURRENTLY (sql/0004 does)
    if re.search(r"\bCONCURRENTLY\b", statements, re.IGNORECASE) and not runner_outside:
        problems.append("CONCURRENTLY cannot run inside a transaction: declare `-- migrate: no-transaction`")
    return problems


@pytest.fixture(scope="module")
def squawk() -> str:
    """The squawk binary beside this Python (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / "squawk"
    found = str(beside) if beside.is_file() else shutil.which("squawk")
    if found is None:
        if os.environ.get("REQUIRE_PGBOUNCER") == "1":
            pytest.fail("REQUIRE_PGBOUNCER=1 but squawk is missing (setup.cfg's dev extra has squawk-cli)")
        pytest.skip("squawk is not installed (`make install` installs squawk-cli); REQUIRE_PGBOUNCER=1 makes this fail")
    return found


def lint(squawk: str, folder: Path, files: dict[str, str]) -> tuple[int, list[dict[str, object]]]:
    """Write files into folder, lint them with this repo's .squawk.toml; return the exit code and the findings."""
    paths = []
    for name, sql in files.items():
        path = folder / name
        path.write_text(sql)
        paths.append(str(path))
    done = subprocess.run(
        [squawk, "--config", str(CONFIG), "--reporter", "json", *paths],
        capture_output=True, text=True, timeout=60, check=False,
    )
    return done.returncode, json.loads(done.stdout or "[]")


def test_squawk_passes_every_committed_migration_as_make_lint_runs_it(squawk: str) -> None:
    assert MIGRATIONS, "no sql/*.sql found"
    # From the project folder, as `make lint` runs it: squawk finds .squawk.toml itself (gcc: plain text findings).
    done = subprocess.run(
        [squawk, "--reporter", "gcc", *(str(path.relative_to(PROJECT_DIR)) for path in MIGRATIONS)],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_make_lint_runs_squawk_over_sql() -> None:
    lint_recipe = (PROJECT_DIR / "Makefile").read_text().split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert re.search(r"^\t\S*squawk sql/\*\.sql$", lint_recipe, re.MULTILINE), lint_recipe


# Each breaks the release still serving (which reads the old shape) or holds a lock that stalls traffic.
DANGEROUS = {
    "drop_column": ("ALTER TABLE idempotency_keys DROP COLUMN request_hash;", "ban-drop-column"),
    "rename_column": ("ALTER TABLE users RENAME COLUMN name TO full_name;", "renaming-column"),
    "change_column_type": ("ALTER TABLE order_items ALTER COLUMN quantity TYPE bigint;", "changing-column-type"),
    "set_not_null_directly": ("ALTER TABLE orders ALTER COLUMN created_at SET NOT NULL;", "adding-not-nullable-field"),
    "index_without_concurrently": ("CREATE INDEX orders_created_at_idx ON orders (created_at);",
                                   "require-concurrent-index-creation"),
    "volatile_default": ("ALTER TABLE users ADD COLUMN token uuid DEFAULT gen_random_uuid();",
                         "adding-field-with-default"),
    "required_column": ("ALTER TABLE users ADD COLUMN plan text NOT NULL;", "adding-required-field"),
    "constraint_without_not_valid": ("ALTER TABLE orders ADD CONSTRAINT orders_total_cap CHECK (total_cents < 10^9);",
                                     "constraint-missing-not-valid"),
    "drop_table": ("DROP TABLE order_items;", "ban-drop-table"),
    "drop_index_without_concurrently": ("DROP INDEX orders_user_id_idx;", "require-concurrent-index-deletion"),
}


@pytest.mark.parametrize("name", DANGEROUS)
def test_a_dangerous_migration_fails_the_lint_naming_its_rule(squawk: str, tmp_path: Path, name: str) -> None:
    sql, rule = DANGEROUS[name]
    code, findings = lint(squawk, tmp_path, {f"0100_{name}.sql": sql + "\n"})
    assert code != 0
    assert rule in {finding["rule_name"] for finding in findings}, findings
    assert all(finding["message"] for finding in findings), "each finding says what goes wrong"


# The expand/contract way to each of the changes above passes as it is.
SAFE = {
    "nullable_column_and_constant_default": {
        "0100_a.sql": "ALTER TABLE users ADD COLUMN plan text;\nALTER TABLE users ADD COLUMN score bigint DEFAULT 0;\n",
    },
    "not_null_through_a_check_not_valid": {
        "0100_a.sql": "ALTER TABLE users ADD COLUMN plan text;\n"
        "ALTER TABLE users ADD CONSTRAINT users_plan_not_null CHECK (plan IS NOT NULL) NOT VALID;\n",
        "0101_b.sql": "ALTER TABLE users VALIDATE CONSTRAINT users_plan_not_null;\n"
        "ALTER TABLE users ALTER COLUMN plan SET NOT NULL;\n",
    },
    "foreign_key_not_valid_then_validated": {
        "0100_a.sql": "ALTER TABLE orders ADD CONSTRAINT orders_user_fk2 FOREIGN KEY (user_id) REFERENCES users (id)"
        " NOT VALID;\n",
        "0101_b.sql": "ALTER TABLE orders VALIDATE CONSTRAINT orders_user_fk2;\n",
    },
    "index_concurrently_outside_a_transaction": {
        "0100_a.sql": "-- migrate: no-transaction\n-- squawk-disable-assume-in-transaction\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_created_at_idx ON orders (created_at);\n",
    },
    "a_new_table_and_its_index": {
        "0100_a.sql": "CREATE TABLE coupons (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, code text NOT NULL);\n"
        "CREATE UNIQUE INDEX coupons_code_key ON coupons (code);\n",
    },
}


@pytest.mark.parametrize("name", SAFE)
def test_the_expand_contract_way_passes_the_lint(squawk: str, tmp_path: Path, name: str) -> None:
    code, findings = lint(squawk, tmp_path, SAFE[name])
    assert (code, findings) == (0, [])


def test_an_exemption_with_a_reason_lets_the_statement_through(squawk: str, tmp_path: Path) -> None:
    sql = (
        "-- squawk-ignore ban-drop-column -- why: no release reads it since 0099 stopped writing it\n"
        "ALTER TABLE idempotency_keys DROP COLUMN request_hash;\n"
    )
    assert lint(squawk, tmp_path, {"0100_a.sql": sql}) == (0, [])
    assert exemptions_without_reason(sql) == []


def test_an_exemption_covers_only_the_rule_it_names(squawk: str, tmp_path: Path) -> None:
    sql = (
        "-- squawk-ignore renaming-column -- why: the wrong rule is named here on purpose\n"
        "ALTER TABLE idempotency_keys DROP COLUMN request_hash;\n"
    )
    code, findings = lint(squawk, tmp_path, {"0100_a.sql": sql})
    assert code != 0
    assert [finding["rule_name"] for finding in findings] == ["ban-drop-column"]


def test_a_misspelt_rule_in_an_exemption_fails_the_lint(squawk: str, tmp_path: Path) -> None:
    sql = "-- squawk-ignore ban-drop-colum -- why: a typo must not pass as an exemption\nDROP TABLE order_items;\n"
    code, findings = lint(squawk, tmp_path, {"0100_a.sql": sql})
    assert code != 0
    assert {"unused-ignore", "ban-drop-table"} <= {finding["rule_name"] for finding in findings}


@pytest.mark.parametrize(
    "line",
    [
        "-- squawk-ignore ban-drop-column",
        "-- squawk-ignore-file",
        "-- squawk-ignore ban-drop-column -- why:",
        "-- squawk-ignore ban-drop-column -- why: safe",
        "-- squawk-ignore-file ban-drop-column -- dropped, fine",
        "/* squawk-ignore ban-drop-column */",
    ],
)
def test_an_exemption_without_a_reason_is_refused(line: str) -> None:
    assert exemptions_without_reason(f"{line}\nALTER TABLE t DROP COLUMN c;\n") == [line]


@pytest.mark.parametrize("path", MIGRATIONS, ids=lambda path: path.name)
def test_every_exemption_in_sql_says_why(path: Path) -> None:
    assert exemptions_without_reason(path.read_text()) == []


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE INDEX CONCURRENTLY i ON t (c);\n",
        "-- migrate: no-transaction\nCREATE INDEX CONCURRENTLY i ON t (c);\n",
        "-- squawk-disable-assume-in-transaction\nCREATE INDEX CONCURRENTLY i ON t (c);\n",
    ],
)
def test_a_file_run_outside_a_transaction_says_so_to_the_runner_and_to_the_linter(sql: str) -> None:
    assert transaction_marker_mismatches(sql) != []
    both = "-- migrate: no-transaction\n-- squawk-disable-assume-in-transaction\n" + sql.splitlines()[-1]
    assert transaction_marker_mismatches(both) == []


@pytest.mark.parametrize("path", MIGRATIONS, ids=lambda path: path.name)
def test_every_migration_in_sql_agrees_with_the_linter_about_its_transaction(path: Path) -> None:
    assert transaction_marker_mismatches(path.read_text()) == []
