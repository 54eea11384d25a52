"""One source of truth: every variable the service reads has one row in SETTINGS, and every document lists it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from webapp.cli import env_example, main, reads, settings_markdown
from webapp.gunicorn.server_settings import ServerSettings, load_server_settings
from webapp.settings import SETTING, SETTINGS, Config, load_config, variables_read

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent
URL = "postgresql://app@db/shop"


def app_reads() -> list[str]:
    return variables_read(load_config)


def server_reads() -> list[str]:
    return variables_read(lambda environ: load_server_settings(environ, cpus=2))


def test_every_variable_load_config_and_load_server_settings_read_has_a_row_in_the_table():
    assert set(app_reads()) | set(server_reads()) <= set(SETTING)


def test_every_row_is_read_by_the_reader_it_names():
    # Also the other way round: a row nobody reads is a documented setting that does nothing.
    for setting in SETTINGS:
        read_by = {"app": setting.name in app_reads(), "server": setting.name in server_reads()}
        expected = {"app": (True, False), "server": (False, True), "both": (True, True), "entry": (False, False)}
        assert (read_by["app"], read_by["server"]) == expected[setting.reader], setting.name


def test_the_table_has_one_row_per_name_and_every_row_has_a_meaning():
    assert len(SETTING) == len(SETTINGS)
    assert all(s.meaning and s.kind for s in SETTINGS)


def test_config_defaults_are_the_tables_defaults():
    # Config's own defaults (tests build Config directly) must say what load_config does.
    assert load_config({"DATABASE_URL": URL}) == Config(database_url=URL)


def test_server_defaults_are_the_tables_defaults():
    settings: ServerSettings = load_server_settings({}, cpus=2)
    assert settings.port == SETTING["PORT"].default and settings.bind_host == SETTING["BIND_HOST"].default
    assert settings.backlog == SETTING["GUNICORN_BACKLOG"].default
    assert settings.stop_window == SETTING["STOP_WINDOW_SECONDS"].default
    assert settings.workers == 5  # WEB_CONCURRENCY's computed default: 2 × CPUs + 1


def test_env_example_is_what_the_generator_writes_and_names_every_variable():
    text = (PROJECT_DIR / ".env.example").read_text()
    assert text == env_example(), "regenerate: webapp settings --env-example > .env.example"
    named = re.findall(r"^# ([A-Z][A-Z0-9_]+)=", text, re.MULTILINE)
    assert named == [s.name for s in SETTINGS]


def readme_configuration_section() -> str:
    readme = (PROJECT_DIR / "README.md").read_text()
    return readme.split("\n## Configuration", 1)[1].split("\n## ", 1)[0]


def test_readmes_configuration_table_is_the_generated_one():
    assert settings_markdown() in readme_configuration_section()


def test_readmes_configuration_section_names_every_variable_in_the_table():
    section = readme_configuration_section()
    missing = [s.name for s in SETTINGS if f"`{s.name}`" not in section]
    assert not missing, f"README's Configuration lacks {missing}: paste `webapp settings --markdown`"


@pytest.mark.parametrize("command", ["serve", "dev"])
def test_serve_and_devs_help_list_every_variable_in_the_table(command: str, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"], {})
    text = " ".join(capsys.readouterr().out.split())
    assert [s.name for s in SETTINGS] == reads(command)
    assert all(s.name in text for s in SETTINGS)


def test_check_reads_what_load_config_reads():
    assert set(reads("check")) == set(app_reads())


def test_the_settings_command_prints_every_variable_with_its_default(capsys):
    assert main(["settings"], {}) == 0
    text = capsys.readouterr().out
    assert all(f"{s.name} (default: " in text for s in SETTINGS)
    assert main(["settings", "--markdown"], {}) == 0
    assert capsys.readouterr().out == settings_markdown()
