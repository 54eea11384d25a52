"""The Dockerfile's steps, run: the build stage installs, the release step migrates, CMD serves, HEALTHCHECK probes.

No Docker engine runs on this machine (the client only), so `docker build` cannot run here.
Instead the Dockerfile is interpreted, instruction by instruction as BuildKit parsed it, in a
folder that stands in for the image's filesystem: the build context (docker's .dockerignore
rules) is what COPY sees, RUN runs with bash, absolute paths (/opt/venv, /src, /tmp, /app) point
into that folder. The final stage gets only what its COPY --from takes: the build's /src is gone
before the CMD starts. The CMD then runs with the image's ENV against a real Postgres, as the
image's USER (setpriv) where that uid can run this Python; where it cannot (pyenv's Python under
a 0700 /root, as on this machine) as ourselves, and the USER is only checked statically
(tests/unit/test_platform_files.py). Not emulated: the base image's own files (this machine's
Python runs the steps: it must be .python-version's minor) and the container's isolation.
Steps as in tests/functional/test_deploy.py, whose helpers this reuses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from packaging.utils import canonicalize_name
from psycopg.conninfo import conninfo_to_dict

from tests.conftest import scratch_database
from tests.functional.test_deploy import json_lines, stop, wait_until_ready, web_process, write_then_read
from tests.gunicorn_server import free_port
from tests.platform_files import PROJECT_DIR, Stage, copy_context, dockerfile_stages, python_version
from webapp.postgres.migration_files import migration_files

pytestmark = pytest.mark.slow

# The python image's PATH, which `ENV PATH=/opt/venv/bin:$PATH` extends.
IMAGE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Image:
    """The final stage, emulated: its filesystem folder, environment, user, CMD and HEALTHCHECK."""

    root: Path
    env: dict[str, str]
    workdir: Path
    user: str
    switch_user: bool
    cmd: list[str]
    healthcheck: list[str]
    build_seconds: float

    def as_user(self, argv: list[str]) -> list[str]:
        """argv run as the image's USER (setpriv) where that user can run this Python, else as ourselves."""
        if not self.switch_user:
            return argv
        uid, _, gid = self.user.partition(":")
        return ["setpriv", f"--reuid={uid}", f"--regid={gid or uid}", "--clear-groups", "--", *argv]


def user_runs_this_python(user: str) -> bool:
    """Whether the image's uid runs the Python we run (the base image's python is everyone's; ours may not be).

    Trap, seen here: pyenv's Python under /root (mode 0700) starts for another uid, but finds neither
    its libpython nor its stdlib and silently runs the system's 3.11.2 instead.
    """
    if os.geteuid() != 0:
        return False
    uid, _, gid = user.partition(":")
    probe = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid or uid}", "--clear-groups", "--",
                            sys.executable, "-c", "import sys; print(sys.version)"],
                           capture_output=True, text=True, timeout=30)
    return probe.stdout.strip() == sys.version


class Emulation:
    """Maps the image's absolute paths into a folder and runs instructions there."""

    def __init__(self, root: Path, context: Path, python_bin: Path):
        self.root = root
        self.context = context
        self.python_bin = python_bin
        self.env: dict[str, str] = {"PATH": IMAGE_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
        self.workdir = "/"
        (root / "tmp").mkdir(parents=True)
        (root / "tmp").chmod(0o1777)

    def inside(self, path: str) -> Path:
        return self.root / os.path.normpath(os.path.join(self.workdir, path)).lstrip("/")

    def mapped(self, text: str) -> str:
        """A command or a value with the image's absolute paths pointing into the folder."""
        return re.sub(r"(?<![\w./-])/(opt|src|tmp|app)\b", lambda m: f"{self.root}/{m[1]}", text)

    def expand(self, value: str) -> str:
        return re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: self.env.get(m[1] or m[2], ""), value)

    def host_env(self) -> dict[str, str]:
        """The environment a RUN sees: the image's, paths mapped, this Python first as `python`."""
        env = {k: self.mapped(v) for k, v in self.env.items()}
        env["PATH"] = f"{self.python_bin}:{env['PATH']}"
        return env

    def copy(self, src: Path, dest: str, *, into: bool) -> None:
        """COPY's rules: a folder's contents go into dest; a file goes into dest/ or becomes dest."""
        assert src.exists(), f"COPY source {src} is not there"
        target = self.inside(dest)
        if src.is_dir():
            shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True)
            return
        if into or target.is_dir():
            target = target / src.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)

    def run_stage(self, stage: Stage, stages: dict[str, Path]) -> None:
        for step in stage.instructions:
            if step.cmd == "ENV":
                for name, value in zip(step.value[::2], step.value[1::2], strict=True):
                    self.env[name] = self.expand(value)
            elif step.cmd == "WORKDIR":
                self.workdir = os.path.join(self.workdir, step.value[0])
                self.inside(".").mkdir(parents=True, exist_ok=True)
            elif step.cmd == "COPY":
                *sources, dest = step.value
                assert all(f.startswith("--from=") for f in step.flags), f"teach the emulation {step.flags}"
                origin = stages[step.flags[0].removeprefix("--from=")] if step.flags else self.context
                for source in sources:
                    self.copy(origin / source.lstrip("/"), dest, into=dest.endswith("/") or len(sources) > 1)
            elif step.cmd == "RUN":
                command = self.mapped(" ".join(step.value))
                if "useradd" in command or "groupadd" in command:
                    continue  # /etc/passwd is the image's: setpriv runs the CMD under the same numeric ids
                done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=self.inside("."),
                                      env=self.host_env(), capture_output=True, text=True, timeout=600)
                assert done.returncode == 0, f"{step.original}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
            elif step.cmd not in ("USER", "EXPOSE", "HEALTHCHECK", "CMD"):
                raise AssertionError(f"the emulation does not know {step.cmd}: teach it ({step.original})")


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    if f"{sys.version_info.major}.{sys.version_info.minor}" != python_version():
        pytest.fail(f"the emulation runs the image's steps with this Python: it must be {python_version()}")
    build, final = dockerfile_stages()
    # Not pytest's tmp_path: that is mode 0700, and the image's user must get into the venv.
    root = Path(tempfile.mkdtemp(prefix="webapp-image-"))
    try:
        root.chmod(0o755)
        context = root / "context"
        copy_context(PROJECT_DIR, context)
        (root / "python-bin").mkdir()
        (root / "python-bin" / "python").symlink_to(sys.executable)  # the base image's `python`

        started = time.monotonic()
        builder = Emulation(root / "build", context, root / "python-bin")
        builder.run_stage(build, {})
        seconds = time.monotonic() - started

        runtime = Emulation(root / "final", context, root / "python-bin")
        runtime.run_stage(final, {build.name or "0": builder.root})
        shutil.rmtree(builder.root / "src")  # the final stage has only what it copied: prove it needs no more
        # A venv is not relocatable: in the image both stages' /opt/venv are one path, here they are two,
        # so the final stage's /opt is the build stage's (the copy above checked that it is there).
        shutil.rmtree(runtime.root / "opt")
        (runtime.root / "opt").symlink_to(builder.root / "opt")
        env = {k: runtime.mapped(v) for k, v in runtime.env.items()}
        env["HOME"] = "/nonexistent"  # the image's user has no home
        cmd = list(final.last("CMD").value)
        healthcheck = list(final.last("HEALTHCHECK").value[1:])
        user = final.last("USER").value[0]
        yield Image(runtime.root, env, runtime.inside("."), user, user_runs_this_python(user), cmd, healthcheck,
                    seconds)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def empty_database(server_url: str) -> Iterator[str]:
    with scratch_database(server_url, "webapp_image", migrated=False) as url:
        yield url


def test_the_build_stage_installs_only_the_pins_and_the_package_in_well_under_a_minute(image: Image):
    python = Path(image.env["PATH"].split(":")[0]) / "python"
    listing = subprocess.run([str(python), "-m", "pip", "list", "--format=json", "--exclude", "pip",
                              "--exclude", "setuptools"],  # the venv's own (Python 3.11 seeds both)
                             capture_output=True, text=True, check=True)
    installed = {canonicalize_name(package["name"]) for package in json.loads(listing.stdout)}
    pinned = {canonicalize_name(line.split("==")[0])
              for line in (PROJECT_DIR / "requirements.txt").read_text().splitlines() if "==" in line}
    assert installed == pinned | {"webapp"}, "requirements.txt's pins and `.`, nothing else"
    assert image.build_seconds < 120, f"build stage took {image.build_seconds:.1f} s"
    # Not an editable install pointing at the (removed) /src: the wheel's own files, LICENSE and sql/ included.
    where = subprocess.run([str(python), "-c", "import importlib.metadata as m, webapp.postgres.migration_files as w; "
                            "d = m.distribution('webapp'); "
                            "print([str(f) for f in d.files if f.name == 'LICENSE']); print(w.default_sql_dir())"],
                           cwd=image.workdir, env=image.env, capture_output=True, text=True, timeout=30)
    assert where.returncode == 0, where.stderr
    licenses, sql_dir = where.stdout.splitlines()
    assert "LICENSE" in licenses
    assert "site-packages" in sql_dir and sorted(p.name for p in Path(sql_dir).glob("*.sql")) == [
        p.name for p in migration_files()]


def test_the_image_migrates_then_serves_as_its_user_and_its_healthcheck_follows_the_process(
    image: Image, empty_database: str, tmp_path: Path,
):
    port = free_port()
    if str(conninfo_to_dict(empty_database).get("host") or "/").startswith("/") and image.switch_user:
        pytest.skip("the embedded Postgres' socket folder is closed to the image's user; set TEST_DATABASE_URL")
    # `docker run -e DATABASE_URL=... -e PORT=...`: the run's variables over the image's ENV.
    env = {**image.env, "DATABASE_URL": empty_database, "PORT": str(port), "WEB_CONCURRENCY": "2"}
    logs = tmp_path / "logs"
    logs.mkdir()
    logs.chmod(0o777)

    # The release step the Dockerfile documents (compose.yaml's migrate service): `webapp migrate`.
    release = subprocess.run(image.as_user(["webapp", "migrate"]), cwd=image.workdir, env=env, capture_output=True,
                             text=True, timeout=60)
    assert release.returncode == 0, release.stdout + release.stderr
    with psycopg.connect(empty_database) as conn:
        recorded = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert recorded == [path.name for path in migration_files()]

    def healthcheck() -> int:
        return subprocess.run(image.as_user(image.healthcheck), cwd=image.workdir, env=env, capture_output=True,
                              timeout=10).returncode

    with web_process(image.as_user(image.cmd), env, image.workdir, logs) as web:
        wait_until_ready(port, web, logs)
        assert healthcheck() == 0
        write_then_read(port)
        owner = subprocess.run(["ps", "-o", "uid=", "-p", str(web.pid)], capture_output=True, text=True)
        if image.switch_user:
            assert owner.stdout.strip() == image.user.partition(":")[0], "not the image's USER"
        assert stop(web) == 0
    assert healthcheck() != 0, "a stopped server must fail the check"
    records = json_lines((logs / "stdout").read_text())
    assert (logs / "stderr").read_text() == ""
    assert [r for r in records if r["message"] == "request" and r["path"] == "/users"]
    assert not [r for r in records if r["logger"] == "webapp.serving"], "gunicorn ran with webapp's settings"
    assert not list(image.workdir.iterdir()), "nothing written to the working directory (root's in the image)"
