"""Releases as a platform runs them: the release before found in git, materialised, run by its own Procfile.

The release before is the code just before the newest commit that changed sql/ (the one whose schema
this release brings), or RELEASE_BEFORE=<rev>. It is unpacked with `git archive` into a temporary
folder (nothing registered in .git, so a killed run leaves no worktree behind) and run with
PYTHONPATH set to that folder: its own webapp package, this checkout's virtualenv for the dependencies.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from bench.servers import PROJECT_DIR, Gunicorn

HISTORY_HINT = (
    "it needs the repository's git history (a full clone: `git fetch --unshallow`), "
    "or RELEASE_BEFORE=<rev> naming a commit that is present"
)
# What a Procfile line starts with, run from this virtualenv (the release's own package comes first on PYTHONPATH).
_PROGRAMS = {"gunicorn": [sys.executable, "-m", "gunicorn"], "webapp": [sys.executable, "-m", "webapp"],
             "python": [sys.executable], "python3": [sys.executable]}


class ReleaseHistoryError(RuntimeError):
    """The release before cannot be found: no git, no repository, or not enough history."""


def _git(*args: str, project_dir: Path = PROJECT_DIR) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=project_dir, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as exc:
        raise ReleaseHistoryError(f"git is not installed: {HISTORY_HINT}") from exc
    if done.returncode != 0:
        raise ReleaseHistoryError(f"`git {' '.join(args)}` failed ({done.stderr.strip()}): {HISTORY_HINT}")
    return done.stdout.strip()


def previous_release(project_dir: Path = PROJECT_DIR, environ: Mapping[str, str] = os.environ) -> str:
    """The commit of the release before: RELEASE_BEFORE, else the parent of the newest commit that changed sql/."""
    wanted = environ.get("RELEASE_BEFORE")
    if not wanted:
        newest = _git("log", "-1", "--format=%H", "--", "sql/", project_dir=project_dir)
        if not newest:
            raise ReleaseHistoryError(f"no commit that changed sql/ was found: {HISTORY_HINT}")
        wanted = f"{newest}^"
    return _git("rev-parse", "--verify", "--quiet", f"{wanted}^{{commit}}", project_dir=project_dir)


@contextmanager
def materialised(rev: str, project_dir: Path = PROJECT_DIR) -> Iterator[Path]:
    """The tree of commit `rev` in a temporary folder, removed at the end whatever happens."""
    folder = Path(tempfile.mkdtemp(prefix="webapp-release-before-"))
    try:
        archive = folder / "release.tar"
        _git("archive", "--format=tar", f"--output={archive}", rev, project_dir=project_dir)
        with tarfile.open(archive) as tar:
            tar.extractall(folder / "tree", filter="data")
        archive.unlink()
        yield folder / "tree"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def procfile_argv(tree: Path, process_type: str) -> list[str]:
    """The tree's Procfile line `process_type: ...` as an argv for this virtualenv."""
    for line in (tree / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == process_type:
            words = shlex.split(command)
            if words[0] not in _PROGRAMS:
                raise ValueError(f"{tree}/Procfile {process_type}: runs {words[0]!r}, which this harness cannot")
            return [*_PROGRAMS[words[0]], *words[1:]]
    raise ValueError(f"{tree}/Procfile has no {process_type}: line")


def release_env(tree: Path, database_url: str, **extra: str) -> dict[str, str]:
    """The environment a process of the release in `tree` gets: its own package first, no developer .env."""
    return {"DATABASE_URL": database_url, "PYTHONPATH": str(tree), "FLASK_SKIP_DOTENV": "1", "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": "info", "REDIS_URL": "", **extra}


def imported_package(tree: Path, env: Mapping[str, str]) -> Path:
    """Where `import webapp` resolves for a process of that release (it must be inside its tree)."""
    done = subprocess.run([sys.executable, "-c", "import webapp; print(webapp.__file__)"], cwd=tree,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=True)
    return Path(done.stdout.strip())


def run_release_phase(tree: Path, env: Mapping[str, str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run the tree's Procfile `release:` line (`webapp migrate`) to the end; the caller checks returncode."""
    return subprocess.run(procfile_argv(tree, "release"), cwd=tree, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


def web_process(tree: Path, env: dict[str, str], log_path: Path, workers: int = 2) -> Gunicorn:
    """The tree's Procfile `web:` process (not started), on a free loopback port."""
    return Gunicorn("procfile web", {"BIND_HOST": "127.0.0.1", **env}, workers=workers, log_path=log_path,
                    argv=procfile_argv(tree, "web"), cwd=tree)
