"""The migration files: sql/NNNN_*.sql read into statements, a checksum, and how each must run."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

_FILENAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

@dataclass(frozen=True)
class MigrationFile:
    """One sql/ file: its statements, its checksum, and how it must run."""

    name: str
    statements: tuple[str, ...]
    checksum: str
    transactional: bool
    batches: bool

    @classmethod
    def read(cls, path: Path) -> MigrationFile:
        text = path.read_text()
        header = text[: text.find("\n\n")] if "\n\n" in text else text  # markers sit in the first comment block
        return cls(
            name=path.name,
            statements=tuple(split_statements(text)),
            checksum=hashlib.sha256(text.encode()).hexdigest(),
            transactional="-- migrate: no-transaction" not in header,
            batches="-- migrate: batches" in header,
        )


def default_sql_dir() -> Path:
    """The migrations: inside the package in an installed wheel, beside it in a checkout (or editable install)."""
    # setup.cfg maps the top-level sql/ into the wheel as the package folder webapp/sql.
    package = Path(__file__).resolve().parent.parent
    installed = package / "sql"
    return installed if installed.is_dir() else package.parent / "sql"


def migration_files(sql_dir: Path | None = None) -> list[Path]:
    """Return the numbered migration files in the order they must run."""
    sql_dir = sql_dir or default_sql_dir()
    files = sorted(p for p in sql_dir.iterdir() if _FILENAME.match(p.name))
    numbers = [p.name[:4] for p in files]
    if len(set(numbers)) != len(numbers):
        raise RuntimeError(f"two migrations share a number in {sql_dir}")
    return files


def split_statements(text: str) -> list[str]:
    """The file's statements, split at semicolons outside quotes, comments and dollar-quoted bodies."""
    statements, start, i = [], 0, 0
    while i < len(text):
        if text.startswith("--", i):
            i = _end_of(text, "\n", i)
        elif text.startswith("/*", i):
            i = _end_of(text, "*/", i + 2)
        elif text[i] in "'\"":
            i = _end_of(text, text[i], i + 1)  # a doubled quote inside reads as two strings: same end
        elif (tag := re.match(r"\$[A-Za-z_]*\$", text[i:])) is not None:
            i = _end_of(text, tag.group(), i + len(tag.group()))
        elif text[i] == ";":
            statements.append(text[start:i])
            start, i = i + 1, i + 1
        else:
            i += 1
    statements.append(text[start:])
    return [s.strip() for s in statements if _has_code(s)]


def _end_of(text: str, token: str, start: int) -> int:
    end = text.find(token, start)
    return len(text) if end < 0 else end + len(token)


def _has_code(statement: str) -> bool:
    return bool(code_of(statement).strip())


def code_of(statement: str) -> str:
    """The statement without its comments (for the log line, and to find the tables it names)."""
    return re.sub(r"--[^\n]*|/\*.*?\*/", "", statement, flags=re.DOTALL).strip()
