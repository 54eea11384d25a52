"""Logging setup: JSON or console lines, Python warnings as log lines, and the bare-gunicorn warning."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import warnings
from collections.abc import Iterator

import pytest

from webapp.observability.logs import (
    CONSOLE_HANDLER_NAME,
    HANDLER_NAME,
    configure_logging,
    gunicorn_logconfig,
)


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Restore the root logger (and Python's warnings hook) as they were."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    yield
    logging.captureWarnings(False)
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


def test_console_format_gives_a_readable_line_with_the_extras(root_logging):
    stream = io.StringIO()
    configure_logging("info", stream, log_format="console")
    logging.getLogger("webapp.x").info("hello", extra={"port": 8000})
    line = stream.getvalue().strip()
    assert " INFO  webapp.x [" in line and line.endswith("]: hello port=8000")
    assert [h.get_name() for h in logging.getLogger().handlers].count(CONSOLE_HANDLER_NAME) == 1


def test_a_worker_keeps_the_format_its_master_set_up(root_logging):
    logging.config.dictConfig(gunicorn_logconfig("info", "console"))  # the master, LOG_FORMAT=console
    stream = io.StringIO()
    configure_logging("info", stream)  # create_app in the worker, told no format
    names = [h.get_name() for h in logging.getLogger().handlers]
    assert names.count(CONSOLE_HANDLER_NAME) == 1 and HANDLER_NAME not in names
    configure_logging("info", stream, log_format="json")
    names = [h.get_name() for h in logging.getLogger().handlers]
    assert names.count(HANDLER_NAME) == 1 and CONSOLE_HANDLER_NAME not in names


def test_a_python_warning_becomes_one_json_log_line(root_logging):
    stream = io.StringIO()
    logging.captureWarnings(False)  # pytest's own warning capture may have claimed the hook first
    configure_logging("info", stream)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("unclosed <socket>", ResourceWarning, stacklevel=1)
    [line] = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["logger"] == "py.warnings" and record["level"] == "WARNING"
    assert "ResourceWarning: unclosed <socket>" in record["message"]


def test_a_bare_gunicorn_is_warned_about_once_and_ours_is_not(caplog):
    from webapp.app import warn_if_served_without_settings

    with caplog.at_level(logging.WARNING, logger="webapp.serving"):
        warn_if_served_without_settings({"SERVER_SOFTWARE": "gunicorn/27.0.1"})
        warn_if_served_without_settings({"SERVER_SOFTWARE": "gunicorn/27.0.1",
                                         "WEBAPP_GUNICORN_SETTINGS": "webapp.gunicorn.settings"})
        warn_if_served_without_settings({})  # not gunicorn: the Flask CLI, a test, `webapp migrate`
    [record] = caplog.records
    assert "python:webapp.gunicorn.settings" in record.getMessage()


def test_a_json_line_has_the_fixed_fields_first_then_the_extras_and_the_traceback(root_logging):
    stream = io.StringIO()
    configure_logging("info", stream, log_format="json")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("webapp.x").error("failed %s", "twice", exc_info=True, extra={"order_id": 7})
    line = json.loads(stream.getvalue())
    assert list(line)[:5] == ["time", "level", "logger", "pid", "message"]
    assert (line["level"], line["logger"], line["message"]) == ("ERROR", "webapp.x", "failed twice")
    assert line["order_id"] == 7
    assert line["time"].endswith("Z") and len(line["time"]) == len("2026-12-02T13:42:02.199Z")  # UTC, milliseconds
    assert "ValueError: boom" in line["exc_info"]
    # The record's own fields stay out.
    assert not {"args", "msg", "levelno", "pathname", "thread", "asctime"} & set(line)
