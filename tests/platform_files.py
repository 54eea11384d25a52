"""Reading the files a platform expects the way the platform's own tools do, for the tests that exercise them.

No Docker engine runs on this machine (only the client: `docker build` and `docker compose`
cannot run), so the image's build is emulated: the Dockerfile is parsed by BuildKit's own parser
(the `dockerfile` package), its build context is chosen by docker's .dockerignore rules (the
Docker SDK's exclude_paths, which sends a context the way the CLI does), and its steps are run
in folders that stand in for the image's (tests/functional/test_dockerfile.py).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile
from docker.utils.build import exclude_paths

PROJECT_DIR = Path(__file__).resolve().parent.parent


@dataclass
class Stage:
    """One FROM ... of a Dockerfile and its instructions, in order."""

    image: str
    name: str | None
    instructions: list[dockerfile.Command] = field(default_factory=list)

    def all(self, cmd: str) -> list[dockerfile.Command]:
        return [i for i in self.instructions if i.cmd == cmd.upper()]

    def last(self, cmd: str) -> dockerfile.Command:
        found = self.all(cmd)
        assert found, f"no {cmd.upper()} in the stage FROM {self.image}"
        return found[-1]


def dockerfile_stages(path: Path = PROJECT_DIR / "Dockerfile") -> list[Stage]:
    """The Dockerfile's stages as BuildKit parses them (a syntax error raises dockerfile.GoParseError)."""
    stages: list[Stage] = []
    for command in dockerfile.parse_file(str(path)):
        if command.cmd == "FROM":
            image, *rest = command.value
            name = rest[1] if len(rest) == 2 and rest[0].upper() == "AS" else None
            stages.append(Stage(image, name))
        else:
            assert stages, f"{command.original!r} before the first FROM"
            stages[-1].instructions.append(command)
    return stages


def dockerignore_patterns(root: Path = PROJECT_DIR) -> list[str]:
    path = root / ".dockerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def build_context(root: Path = PROJECT_DIR) -> set[str]:
    """Every path (file or folder, relative, '/'-separated) that `docker build root` would send."""
    return set(exclude_paths(str(root), dockerignore_patterns(root), dockerfile="Dockerfile"))


def copy_context(root: Path, into: Path) -> None:
    """The build context as a folder: what the daemon would receive."""
    for name in sorted(build_context(root)):
        source = root / name
        if source.is_dir() and not source.is_symlink():
            (into / name).mkdir(parents=True, exist_ok=True)
        elif source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)


def known_variables() -> set[str]:
    """Every environment variable the service reads: the app's configuration and the server's."""
    from webapp.cli import LOGGING_VARIABLES, SERVER_VARIABLES
    from webapp.settings import config_variables

    return {*config_variables(), *SERVER_VARIABLES, *LOGGING_VARIABLES}


def python_version() -> str:
    return (PROJECT_DIR / ".python-version").read_text().strip()


def read_settings(environ: dict[str, str]) -> tuple[object, object]:
    """environ read as the app and gunicorn's settings read it at start: (app config, server settings).

    Raises their ConfigError when either refuses it.
    """
    from webapp.gunicorn.server_settings import load_server_settings
    from webapp.settings import load_config

    return load_config(environ), load_server_settings(environ, cpus=2)
