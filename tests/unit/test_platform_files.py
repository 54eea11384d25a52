"""The files a platform or a team expects, each read by the tool that will read it, not only found present.

Dockerfile: BuildKit's parser and hadolint; its build context by docker's .dockerignore rules; its
HEALTHCHECK command run against a listener. (No Docker engine here: `docker build` cannot run;
tests/functional/test_dockerfile.py runs the install steps, the CMD and the HEALTHCHECK instead.)
compose.yaml and .github/dependabot.yml: their published JSON schemas (check-jsonschema's copies).
app.json: the variables and values the app really reads. .pre-commit-config.yaml: pre-commit
itself, hooks run. pyproject.toml: ruff's and mypy's resolved settings.
"""

from __future__ import annotations

import configparser
import http.server
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.gunicorn_server import free_port
from tests.platform_files import (
    PROJECT_DIR,
    build_context,
    dockerfile_stages,
    known_variables,
    python_version,
    read_settings,
)

BIN = Path(sys.executable).parent  # the venv's tools (setup.cfg's dev extra)


def run_tool(*argv: str | Path, cwd: Path = PROJECT_DIR, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def compose() -> dict[str, Any]:
    return yaml.safe_load((PROJECT_DIR / "compose.yaml").read_text())


def app_json() -> dict[str, Any]:
    return json.loads((PROJECT_DIR / "app.json").read_text())


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(PROJECT_DIR / "setup.cfg")
    return parser


def procfile() -> dict[str, str]:
    lines = (PROJECT_DIR / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


# Dockerfile -------------------------------------------------------------------------------------


def test_every_stage_builds_from_the_slim_image_of_python_version():
    stages = dockerfile_stages()
    assert len(stages) == 2, "a build stage and the final one"
    assert {stage.image for stage in stages} == {f"python:{python_version()}-slim"}


def test_the_final_stage_runs_as_the_non_root_user_it_creates():
    final = dockerfile_stages()[-1]
    user = final.last("USER").value[0]
    uid, _, gid = user.partition(":")
    assert uid not in ("root", "0") and gid not in ("root", "0")
    created = " ".join(" ".join(run.value) for run in final.all("RUN"))
    assert f"--uid {uid}" in created and f"--gid {gid or uid}" in created, "USER names a user the image makes"
    order = [i.cmd for i in final.instructions]
    assert order.index("USER") > max(i for i, cmd in enumerate(order) if cmd in ("RUN", "COPY")), \
        "nothing runs as root after USER is set"


def test_the_final_stage_gets_only_the_venv_from_the_build_stage():
    build, final = dockerfile_stages()
    copies = final.all("COPY")
    assert [c.flags for c in copies] == [(f"--from={build.name}",)]
    assert copies[0].value == ("/opt/venv", "/opt/venv"), "a venv only works at the path it was made at"


def test_the_cmd_is_the_stable_serve_command_in_exec_form():
    final = dockerfile_stages()[-1]
    cmd = final.last("CMD")
    assert cmd.json, "exec form: gunicorn is PID 1 and gets docker stop's SIGTERM itself, no shell in between"
    assert cmd.value == ("webapp", "serve")
    assert "webapp = webapp.cli:entrypoint" in setup_cfg()["options.entry_points"]["console_scripts"]


def test_the_image_listens_on_all_interfaces_on_port_by_default():
    env = dict(pair for e in dockerfile_stages()[-1].all("ENV") for pair in zip(e.value[::2], e.value[1::2],
                                                                                  strict=True))
    assert env["BIND_HOST"] == "0.0.0.0" and env["PORT"] == "8000"
    assert dockerfile_stages()[-1].last("EXPOSE").value == ("8000",)


def healthcheck_argv() -> list[str]:
    check = dockerfile_stages()[-1].last("HEALTHCHECK")
    assert check.json and check.value[0] == "CMD"
    return list(check.value[1:])


class _Livez(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(self.status if self.path == "/livez" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def livez_listener() -> Iterator[tuple[int, type[_Livez]]]:
    handler = type("Handler", (_Livez,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def test_the_healthcheck_passes_only_while_livez_answers_200_on_port(livez_listener):
    port, handler = livez_listener
    argv = healthcheck_argv()
    assert argv[0] == "python", "the slim image has python, not curl"
    run = [sys.executable, *argv[1:]]  # the image's python, here

    def check(port: int) -> int:
        return subprocess.run(run, env={"PORT": str(port)}, capture_output=True, timeout=10).returncode

    assert check(port) == 0
    handler.status = 500
    assert check(port) != 0
    assert check(free_port()) != 0, "nothing listening"


def test_hadolint_finds_nothing_in_the_dockerfile():
    done = run_tool(BIN / "hadolint", "--no-color", "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_really_lints_it_a_last_user_root_is_reported(tmp_path: Path):
    broken = tmp_path / "Dockerfile"
    broken.write_text((PROJECT_DIR / "Dockerfile").read_text() + "USER root\n")
    done = run_tool(BIN / "hadolint", "--no-color", broken)
    assert done.returncode != 0 and "DL3002" in done.stdout


def test_every_file_the_dockerfile_copies_is_in_the_build_context():
    context = build_context()
    for stage in dockerfile_stages():
        for copy in stage.all("COPY"):
            if any(flag.startswith("--from=") for flag in copy.flags):
                continue
            for source in copy.value[:-1]:
                assert source in context, f"{copy.original!r}: {source} is not sent (missing or .dockerignore'd)"


def test_the_build_stage_copies_what_building_the_package_reads():
    build = dockerfile_stages()[0]
    copied = {source for copy in build.all("COPY") for source in copy.value[:-1]}
    metadata = setup_cfg()["metadata"]
    long_description = metadata["long_description"].removeprefix("file:").strip()
    mapped = [line.split("=")[1].strip() for line in setup_cfg()["options"]["package_dir"].splitlines() if "=" in line]
    assert {"pyproject.toml", "setup.cfg", "requirements.txt", "webapp", long_description, *mapped} <= copied
    assert "LICENSE" in copied, "setuptools puts LICENSE into the dist-info only when it is there"


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_context(tmp_path: Path):
    (tmp_path / ".dockerignore").write_text((PROJECT_DIR / ".dockerignore").read_text())
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    kept = ["webapp/app.py", "sql/0001.sql", "bench/run.py"]
    left_out = [".git/HEAD", ".venv/bin/python", ".pgdata/PG_VERSION", ".env", "bench/results/run.log",
                "webapp/__pycache__/app.cpython-311.pyc", ".mypy_cache/x", ".pytest_cache/x", ".ruff_cache/x",
                "webapp.egg-info/PKG-INFO"]
    for name in kept + left_out:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    context = build_context(tmp_path)
    assert set(kept) <= context
    assert not context & set(left_out), f"sent: {sorted(context & set(left_out))}"


# compose.yaml -----------------------------------------------------------------------------------


def test_compose_yaml_is_valid_against_the_compose_spec_schema():
    done = run_tool(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", "compose.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_spec_check_really_reads_conditions(tmp_path: Path):
    broken = tmp_path / "compose.yaml"
    broken.write_text((PROJECT_DIR / "compose.yaml").read_text().replace("service_healthy", "service_heathy", 1))
    done = run_tool(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", broken)
    assert done.returncode != 0 and "service_heathy" in done.stdout


def test_compose_runs_real_postgres_15_and_redis_7_with_healthchecks():
    services = compose()["services"]
    assert services["postgres"]["image"] == "postgres:15"
    assert services["redis"]["image"] == "redis:7"
    for name in ("postgres", "redis"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1


def test_compose_starts_web_after_healthy_dependencies_and_a_successful_migration():
    services = compose()["services"]
    assert services["web"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}


def test_compose_migrate_is_the_procfiles_release_step_and_web_the_images_cmd():
    services = compose()["services"]
    assert services["migrate"]["command"] == shlex.split(procfile()["release"])
    assert services["migrate"]["restart"] == "no"
    assert "command" not in services["web"], "web runs the image's CMD"
    assert services["web"].get("healthcheck", {}).get("disable") is not True, "web keeps the image's HEALTHCHECK"
    assert services["web"]["build"] == services["migrate"]["build"] == "."


def interpolated(value: str, environ: dict[str, str]) -> str:
    """Compose's ${NAME:-default} (the only interpolation compose.yaml uses; any other form fails here)."""
    def one(match: re.Match[str]) -> str:
        return environ.get(match[1]) or match[2]
    result = re.sub(r"\$\{([A-Z_][A-Z0-9_]*):-([^}]*)\}", one, value)
    assert "$" not in result, f"unsupported interpolation in {value!r}"
    return result


def test_compose_gives_web_a_configuration_the_app_accepts_pointing_at_its_services():
    services = compose()["services"]
    for name in ("web", "migrate"):
        env = {key: interpolated(str(value), {}) for key, value in services[name]["environment"].items()}
        assert set(env) <= known_variables(), f"{name}: variables the app does not read"
        read_settings(env)  # raises ConfigError naming any value the app refuses
        postgres = services["postgres"]["environment"]
        assert env["DATABASE_URL"] == (f"postgresql://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
                                       f"@postgres:5432/{postgres['POSTGRES_DB']}")
        assert env["REDIS_URL"].startswith("redis://redis:6379/")
    web_env = services["web"]["environment"]
    assert f"{web_env['PORT']}:{web_env['PORT']}" in services["web"]["ports"]


# app.json ---------------------------------------------------------------------------------------


def test_app_json_provisions_postgres_builds_with_the_python_buildpack_and_runs_a_web_dyno():
    app = app_json()
    assert {"name", "description", "env"} <= set(app)
    assert "repository" not in app and "website" not in app, "it must work from any fork"
    assert [addon["plan"].split(":")[0] for addon in app["addons"]] == ["heroku-postgresql"]
    assert app["buildpacks"] == [{"url": "heroku/python"}]
    assert set(app["formation"]) == {"web"} <= set(procfile())
    assert "heroku-redis" in app["description"], "the optional cache is mentioned"


def test_app_json_leaves_migrations_to_the_procfiles_release_phase():
    # Heroku runs `release:` after the button's first build too; a postdeploy migrate would run twice.
    assert procfile()["release"] == "webapp migrate"
    scripts = app_json().get("scripts", {})
    assert not any("migrate" in command for command in scripts.values())


def test_app_json_sets_only_variables_the_app_reads_and_the_database_url_comes_from_the_addon():
    env = app_json()["env"]
    assert set(env) <= known_variables(), f"not read by the app: {sorted(set(env) - known_variables())}"
    assert "DATABASE_URL" not in env and "PORT" not in env, "the platform sets those"
    for name, spec in env.items():
        assert spec.get("description"), f"{name} has no description"


def test_app_json_values_are_the_apps_own_defaults_and_metrics_token_is_generated():
    env = app_json()["env"]
    base = {"DATABASE_URL": "postgres://u:p@db.example:5432/d"}  # what the add-on sets, Heroku's scheme
    defaults = read_settings(base)
    for name, spec in env.items():
        if "value" in spec:
            assert read_settings({**base, name: spec["value"]}) == defaults, \
                f"{name}={spec['value']!r} is not the app's default: the button would change it silently"
    assert env["METRICS_TOKEN"] == {"description": env["METRICS_TOKEN"]["description"], "generator": "secret"}
    assert env["WEB_CONCURRENCY"].get("required") is False and "value" not in env["WEB_CONCURRENCY"], \
        "unset: the buildpack's per-dyno value applies"


# LICENSE, pre-commit, dependabot, pyproject -----------------------------------------------------


def test_license_is_the_mit_text_setup_cfg_declares():
    text = (PROJECT_DIR / "LICENSE").read_text()
    assert setup_cfg()["metadata"]["license"] == "MIT"
    assert text.startswith("MIT License\n\nCopyright (c) 2026 the webapp authors\n")
    assert "Permission is hereby granted, free of charge, to any person obtaining a copy" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text


def pre_commit_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit"), "PATH": f"{BIN}:{os.environ['PATH']}"}


def test_the_pre_commit_config_is_valid_and_names_ruff_mypy_and_squawk(tmp_path: Path):
    done = run_tool(BIN / "pre-commit", "validate-config", ".pre-commit-config.yaml", env=pre_commit_env(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load((PROJECT_DIR / ".pre-commit-config.yaml").read_text())
    hooks = {hook["id"]: hook for repo in config["repos"] for hook in repo["hooks"]}
    assert {"ruff", "mypy", "squawk"} <= set(hooks)
    assert re.search(hooks["squawk"]["files"], "sql/0001_users.sql")
    assert not re.search(hooks["squawk"]["files"], "webapp/migrate.py")
    lint = (PROJECT_DIR / "Makefile").read_text()
    assert hooks["mypy"]["entry"].split()[1:] == ["webapp", "tests", "bench"]
    assert "$(VENV)/bin/mypy webapp tests bench" in lint, "the hook checks what `make lint` checks"


@pytest.mark.parametrize("hook", ["ruff", "mypy"])
def test_the_pre_commit_hook_runs_clean_on_the_whole_tree(hook: str, tmp_path: Path):
    done = run_tool(BIN / "pre-commit", "run", hook, "--all-files", env=pre_commit_env(tmp_path), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Passed" in done.stdout


def test_the_squawk_hook_runs_clean_on_the_migrations(tmp_path: Path):
    env = pre_commit_env(tmp_path)
    found = run_tool("bash", "-c", "command -v squawk", env=env)
    if found.returncode != 0:
        pytest.skip("squawk (squawk-cli) is not installed in this venv or on PATH")
    done = run_tool(BIN / "pre-commit", "run", "squawk", "--all-files", env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dependabot_config_is_valid_and_watches_the_pins_and_the_base_image():
    done = run_tool(BIN / "check-jsonschema", "--builtin-schema", "vendor.dependabot", ".github/dependabot.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    updates = yaml.safe_load((PROJECT_DIR / ".github/dependabot.yml").read_text())["updates"]
    assert {u["package-ecosystem"] for u in updates} == {"pip", "docker"}
    docker = next(u for u in updates if u["package-ecosystem"] == "docker")
    assert {"dependency-name": "python",
            "update-types": ["version-update:semver-major", "version-update:semver-minor"]} in docker["ignore"], \
        "the Python minor moves with .python-version, not by a bot"


def test_ruff_reads_its_settings_from_pyproject_and_make_lint_passes_none():
    done = run_tool(BIN / "ruff", "check", "--show-settings", "webapp/__init__.py")
    assert done.returncode == 0, done.stderr
    settings = done.stdout
    assert re.search(r"^linter\.line_length = 120$", settings, re.MULTILINE)
    assert re.search(r"^linter\.unresolved_target_version = 3\.11$", settings, re.MULTILINE)
    enabled = settings.split("linter.rules.enabled = [", 1)[1].split("]", 1)[0]
    families = {re.sub(r"\d+$", "", code) for code in re.findall(r"\(([A-Z]+\d+)\)", enabled)}
    assert families == {"E", "F", "W", "I", "B", "UP", "SIM"}
    assert "line-too-long (E501)" in enabled
    makefile = (PROJECT_DIR / "Makefile").read_text()
    assert "$(VENV)/bin/ruff check webapp tests bench gunicorn.conf.py\n" in makefile
    assert "--line-length" not in makefile and "--select" not in makefile


def test_mypy_reads_its_settings_from_pyproject(monkeypatch: pytest.MonkeyPatch):
    from mypy.config_parser import parse_config_file
    from mypy.options import Options

    monkeypatch.chdir(PROJECT_DIR)
    options = Options()
    parse_config_file(options, lambda: None, None, sys.stdout, sys.stderr)
    assert Path(str(options.config_file)).name == "pyproject.toml"
    assert options.python_version == (3, 11)
    assert options.check_untyped_defs and options.warn_unused_ignores and options.ignore_missing_imports
    assert "mypy" not in setup_cfg(), "one place for them"
