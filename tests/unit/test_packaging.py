"""The deploy files agree with each other: setup.cfg, requirements.txt, Procfile, .python-version, .env.example."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from webapp.cli import SERVER_VARIABLES
from webapp.settings import config_variables

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(PROJECT_DIR / "setup.cfg")
    return parser


def listed(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_setup_cfg_lists_every_package_and_maps_sql_into_the_wheel():
    options = setup_cfg()["options"]
    on_disk = {".".join(p.parent.relative_to(PROJECT_DIR).parts) for p in (PROJECT_DIR / "webapp").rglob("__init__.py")}
    assert set(listed(options["packages"])) == on_disk | {"webapp.sql"}, "a new package folder must be listed"
    assert listed(options["package_dir"]) == ["webapp.sql = sql"]
    assert "*.sql" in setup_cfg()["options.package_data"]["webapp.sql"]


def test_requirements_txt_pins_every_dependency_inside_setup_cfgs_ranges_then_the_package_itself():
    lines = listed((PROJECT_DIR / "requirements.txt").read_text())
    assert lines[-1] == "."  # Heroku's buildpack installs this package too, like the pins
    pins = dict(line.split("==") for line in lines[:-1])
    pinned = {canonicalize_name(name): version for name, version in pins.items()}
    for text in listed(setup_cfg()["options"]["install_requires"]):
        wanted = Requirement(text)
        version = pinned.get(canonicalize_name(wanted.name))
        assert version is not None, f"{wanted.name} is not pinned: run `make requirements`"
        assert wanted.specifier.contains(version), f"{wanted.name}=={version} is outside {wanted.specifier}"


def test_the_procfile_runs_migrations_in_the_release_phase_and_gunicorn_with_our_settings():
    lines = dict(line.split(": ", 1) for line in listed((PROJECT_DIR / "Procfile").read_text()))
    assert lines["release"] == "webapp migrate"
    assert lines["web"].startswith("gunicorn -c python:webapp.gunicorn.settings ")


def test_python_version_is_one_setup_cfg_accepts():
    version = (PROJECT_DIR / ".python-version").read_text().strip()
    assert re.fullmatch(r"3\.\d+", version)
    minimum = setup_cfg()["options"]["python_requires"].removeprefix(">=")
    assert tuple(map(int, version.split("."))) >= tuple(map(int, minimum.split(".")))


def test_env_example_names_only_variables_something_reads_and_env_is_ignored():
    named = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", (PROJECT_DIR / ".env.example").read_text(), re.MULTILINE))
    assert "DATABASE_URL" in named
    assert named <= set(config_variables()) | set(SERVER_VARIABLES)
    assert ".env" in (PROJECT_DIR / ".gitignore").read_text().splitlines()


def test_requirements_tracing_txt_adds_a_pin_for_every_tracing_extra_requirement_on_top_of_requirements_txt():
    lines = listed((PROJECT_DIR / "requirements-tracing.txt").read_text())
    assert lines[0] == "-r requirements.txt"  # the default install's pins, then the extra's
    pinned = {canonicalize_name(name): version for name, version in (line.split("==") for line in lines[1:])}
    base = {canonicalize_name(line.split("==")[0]) for line in listed((PROJECT_DIR / "requirements.txt").read_text())}
    assert not pinned.keys() & base, "a package pinned twice: run `make requirements`"
    for text in listed(setup_cfg()["options.extras_require"]["tracing"]):
        wanted = Requirement(text)
        version = pinned.get(canonicalize_name(wanted.name))
        assert version is not None, f"{wanted.name} is not pinned: run `make requirements`"
        assert wanted.specifier.contains(version, prereleases=True), f"{wanted.name}=={version} is outside"
