"""Deploys as a platform does them, in clean temporary folders: install, release phase, web process.

One fresh venv per module, built the way Heroku's Python buildpack builds a slug (it cannot run
here; read from its source, lib/pip.sh): the repository's files as a push sends them, then
`pip install -r requirements.txt`. Its dynos then start the Procfile's lines with bash; its
profile scripts set GUNICORN_CMD_ARGS="--access-logfile -" and FORWARDED_ALLOW_IPS="*".
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.conftest import scratch_database
from tests.gunicorn_server import free_port, request
from webapp.postgres.migration_files import migration_files

pytestmark = pytest.mark.slow

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True)
class Slug:
    """The app's files as pushed (app/) and the venv requirements.txt was installed into."""

    app: Path
    bin: Path

    def env(self, **extra: str) -> dict[str, str]:
        """A dyno's environment: the venv first on PATH, nothing of this test process's settings."""
        return {"PATH": f"{self.bin}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8",
                "PYTHONUNBUFFERED": "1", **extra}


def pushed_files() -> list[str]:
    """What `git push` would send: tracked files and new ones not ignored (so .env never goes)."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=PROJECT_DIR, capture_output=True, check=True, timeout=30)
    return [name for name in listing.stdout.decode().split("\0") if name and (PROJECT_DIR / name).is_file()]


@pytest.fixture(scope="module")
def slug(tmp_path_factory: pytest.TempPathFactory) -> Slug:
    root = tmp_path_factory.mktemp("slug")
    app = root / "app"
    for name in pushed_files():
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_DIR / name, app / name)
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    # The buildpack's command (plus pip's own cache, so a second run does not download again).
    install = subprocess.run([str(root / "venv/bin/pip"), "install", "--no-input", "--progress-bar", "off",
                              "-r", "requirements.txt"], cwd=app, capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    return Slug(app, root / "venv/bin")


@pytest.fixture
def empty_database(server_url: str) -> Iterator[str]:
    with scratch_database(server_url, "webapp_deploy", migrated=False) as url:
        yield url


def procfile(slug: Slug) -> dict[str, str]:
    lines = (slug.app / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def json_lines(text: str) -> list[dict[str, object]]:
    """Every line as a JSON object; a plain-text line fails the test."""
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    return records


@contextmanager
def web_process(command: list[str], env: dict[str, str], cwd: Path, logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The web process in its own group (a platform signals the whole dyno); killed at the end whatever happens."""
    with (logs / "stdout").open("wb") as out, (logs / "stderr").open("wb") as err:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=err, start_new_session=True)
    try:
        yield process
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def wait_until_ready(port: int, process: subprocess.Popen[bytes], logs: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with suppress(OSError):
            if request(port, "GET", "/readyz", timeout=2)[0] == 200:
                return
        assert process.poll() is None, f"exited {process.returncode}: {(logs / 'stdout').read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"/readyz never said 200: {(logs / 'stdout').read_text()[-3000:]}"
        time.sleep(0.1)


def write_then_read(port: int) -> None:
    status, _, body = request(port, "POST", "/users", body=b'{"name": "Ada", "email": "ada@example.com"}',
                              headers={"Content-Type": "application/json"})
    assert status == 201, body
    user = json.loads(body)
    status, _, body = request(port, "GET", f"/users/{user['id']}")
    assert status == 200 and json.loads(body)["email"] == "ada@example.com"


def stop(process: subprocess.Popen[bytes]) -> int:
    os.killpg(process.pid, signal.SIGTERM)
    return process.wait(timeout=30)


def test_a_buildpack_style_deploy_releases_then_serves_with_json_lines_only(
    slug: Slug, empty_database: str, tmp_path: Path,
):
    port = free_port()
    env = slug.env(
        DATABASE_URL=empty_database.replace("postgresql://", "postgres://", 1),  # as Heroku hands it out
        PORT=str(port), WEB_CONCURRENCY="2", DYNO="web.1",
        GUNICORN_CMD_ARGS="--access-logfile -", FORWARDED_ALLOW_IPS="*",  # the buildpack's profile.d
    )
    lines = procfile(slug)
    release = subprocess.run(["bash", "-c", lines["release"]], env=env, cwd=slug.app, capture_output=True, text=True,
                             timeout=60)
    assert release.returncode == 0, release.stdout + release.stderr
    assert release.stderr == "" and json_lines(release.stdout)
    with psycopg.connect(empty_database) as conn:
        recorded = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert recorded == [path.name for path in migration_files()]

    with web_process(["bash", "-c", lines["web"]], env, slug.app, tmp_path) as web:
        wait_until_ready(port, web, tmp_path)
        write_then_read(port)
        assert stop(web) == 0
    records = json_lines((tmp_path / "stdout").read_text())
    assert (tmp_path / "stderr").read_text() == ""  # platforms merge stderr into the log stream: nothing there
    assert [r for r in records if r["message"] == "request" and r["path"] == "/users"]  # our line, not an access log
    assert not [r for r in records if r["logger"] == "webapp.serving"]  # the Procfile names our settings


def test_the_installed_package_migrates_checks_and_serves_from_any_folder(
    slug: Slug, empty_database: str, tmp_path: Path,
):
    port = free_port()
    elsewhere = tmp_path / "elsewhere"  # no sql/, no gunicorn.conf.py: only what the wheel installed
    elsewhere.mkdir()
    env = slug.env(DATABASE_URL=empty_database, PORT=str(port), WEB_CONCURRENCY="1")
    show_sql_dir = "import webapp.postgres.migration_files as m; print(m.default_sql_dir())"
    where = subprocess.run([str(slug.bin / "python"), "-c", show_sql_dir],
                           env=env, cwd=elsewhere, capture_output=True, text=True, timeout=30, check=True)
    assert "site-packages" in where.stdout  # the installed copy, not the checkout's

    for command, expected in ((["webapp", "migrate"], 0), (["webapp", "migrate"], 0), (["webapp", "check"], 0)):
        done = subprocess.run(command, env=env, cwd=elsewhere, capture_output=True, text=True, timeout=60)
        assert done.returncode == expected, done.stdout + done.stderr
    with web_process(["webapp", "serve"], env, elsewhere, tmp_path) as web:
        wait_until_ready(port, web, tmp_path)
        write_then_read(port)
        assert stop(web) == 0
    json_lines((tmp_path / "stdout").read_text())
    assert (tmp_path / "stderr").read_text() == ""
