"""webapp.gunicorn.hooks without gunicorn: the hooks' effects, called directly on fakes (no processes)."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import os
import signal
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn.config import Config as GunicornConfig

from webapp.gunicorn import hooks
from webapp.observability.logs import HANDLER_NAME, configure_logging, gunicorn_logconfig, json_formatter, json_handler

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent


# --- master hooks --------------------------------------------------------------------------------


class FakeArbiter:
    """The parts of gunicorn's Arbiter the stop hooks touch."""

    def __init__(self, listeners: list[Any] | None = None, **state: Any):
        self.LISTENERS = listeners or []
        self.reexec_pid = state.get("reexec_pid", 0)
        self.master_pid = state.get("master_pid", 0)
        self.systemd = state.get("systemd", False)
        self.cfg = SimpleNamespace(reuse_port=state.get("reuse_port", False))
        self.killed: list[int] = []

    def kill_workers(self, sig: int) -> None:
        self.killed.append(sig)

    def handle_term(self) -> None:
        raise AssertionError("gunicorn's own handler must have been replaced")

    handle_int = handle_term


class FakeListener:
    family = socket.AF_INET

    def __init__(self) -> None:
        self.options: list[tuple[int, int, bytes]] = []

    def setsockopt(self, level: int, option: int, value: bytes) -> None:
        self.options.append((level, option, value))


def test_on_starting_wipes_the_metrics_dir_and_makes_sigint_as_graceful_as_sigterm(tmp_path: Path, monkeypatch):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"stale")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db/x")  # the master checks the config first
    arbiter = FakeArbiter()

    hooks.on_starting(arbiter, drain_seconds=0)

    assert not list(metrics_dir.iterdir())
    for handler in (arbiter.handle_term, arbiter.handle_int):
        with pytest.raises(StopIteration):  # gunicorn's signal loop then runs its graceful halt()
            handler()
    assert arbiter.killed == []  # no drain: gunicorn's own stop sends the SIGTERM


def test_a_stop_with_a_drain_signals_the_workers_first_then_refuses_new_connections():
    listener = FakeListener()
    arbiter = FakeArbiter([listener])
    with pytest.raises(StopIteration):
        hooks.stop_gracefully(arbiter, drain_seconds=0.01)
    assert arbiter.killed == [signal.SIGTERM]
    assert [(level, option) for level, option, _ in listener.options] == [(socket.SOL_SOCKET, 26)]


@pytest.mark.parametrize("state", [{"reexec_pid": 42}, {"master_pid": 42}, {"systemd": True}, {"reuse_port": True}])
def test_a_socket_someone_else_serves_after_us_is_never_filtered(state: dict[str, Any]):
    listener = FakeListener()
    with pytest.raises(StopIteration):
        hooks.stop_gracefully(FakeArbiter([listener], **state), drain_seconds=0)
    assert listener.options == []  # a USR2 successor, systemd or a reuse_port sibling keeps accepting


# --- worker hooks --------------------------------------------------------------------------------


class Closable:
    def __init__(self) -> None:
        self.closed = False

    def close(self, timeout: float = 5.0) -> None:
        self.closed = True


def test_worker_exit_closes_the_pool_and_the_probe_threads():
    database, health = Closable(), Closable()
    app = SimpleNamespace(extensions={"webapp": {"database": database, "health": health}})
    hooks.worker_exit(server=None, worker=SimpleNamespace(wsgi=app, pid=123))
    assert database.closed and health.closed


def test_worker_exit_in_a_worker_that_never_built_its_app_does_nothing():
    hooks.worker_exit(server=None, worker=SimpleNamespace(pid=123))  # boot failed before load_wsgi


def test_post_fork_hands_the_drain_delay_to_the_worker():
    worker = SimpleNamespace()
    hooks.post_fork(worker, drain_seconds=2.5)
    assert worker.drain_seconds == 2.5


def test_worker_abort_outside_a_request_only_logs(caplog):
    worker = SimpleNamespace(pid=7, current_client=None, cfg=SimpleNamespace(is_ssl=False))
    with caplog.at_level(logging.ERROR, logger="webapp.lifecycle"):
        hooks.worker_abort(worker)
    assert [r.getMessage() for r in caplog.records] == ["worker timeout outside a request"]


# --- logging ---------------------------------------------------------------------------------------


def test_gunicorn_builds_no_access_line_even_when_access_logging_looks_enabled():
    config = GunicornConfig()
    config.set("accesslog", "-")  # as logconfig_dict does, this makes gunicorn's access() do its work
    access_logger = logging.getLogger("gunicorn.access")
    saved = access_logger.handlers[:]
    try:
        logger = hooks.GunicornLogger(config)
        # The stock logger would now format an access line and fail on these Nones.
        logger.access(resp=None, req=None, environ=None, request_time=None)
    finally:
        access_logger.handlers[:] = saved


def test_a_worker_replaces_the_masters_json_handler_instead_of_printing_twice():
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        logging.config.dictConfig(gunicorn_logconfig("info"))  # the master, from gunicorn.conf.py
        configure_logging("info", io.StringIO())  # create_app, in the worker
        assert [h.get_name() for h in root.handlers].count(HANDLER_NAME) == 1
        assert logging.getLogger("gunicorn.error").handlers == []  # it propagates to that one handler
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


@pytest.mark.parametrize("line", [
    "GET /x?q='&token=SECRET4 HTTP/1.1",
    'GET /x?q="a b"&token=SECRET4 HTTP/1.1',
    "GET /x?q=a b c&token=SECRET4 \x7f HTTP/1.1",
])
def test_gunicorn_messages_lose_the_whole_query_string_whatever_it_holds(line: str):
    stream = io.StringIO()
    handler = json_handler(stream)
    record = logging.LogRecord("gunicorn.error", logging.WARNING, __file__, 1,
                               "Invalid request from ip=%s: %s", ("127.0.0.1", f"Invalid HTTP request line: {line!r}"),
                               None)
    handler.handle(record)
    message = json.loads(stream.getvalue())["message"]
    assert "SECRET4" not in message and "token" not in message
    assert message.startswith("Invalid request from ip=127.0.0.1: Invalid HTTP request line: ")
    assert "?<redacted>" in message


def test_a_question_at_the_end_of_a_gunicorn_message_is_kept():
    stream = io.StringIO()
    record = logging.LogRecord("gunicorn.error", logging.ERROR, __file__, 1, "Worker (pid:%s) was sent SIGKILL! "
                               "Perhaps out of memory?", (7,), None)
    json_handler(stream).handle(record)
    assert json.loads(stream.getvalue())["message"].endswith("Perhaps out of memory?")


def test_a_log_line_is_one_json_object_with_time_level_logger_pid_and_message():
    record = logging.LogRecord("webapp.x", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    record.request_id = "abc"
    line = json_formatter().format(record)
    assert "\n" not in line
    fields = json.loads(line)
    assert fields["time"].endswith("Z") and fields["level"] == "INFO" and fields["logger"] == "webapp.x"
    assert (fields["pid"], fields["message"], fields["request_id"]) == (os.getpid(), "hello world", "abc")


# --- the master's configuration check --------------------------------------------------------------


def test_the_master_refuses_to_start_on_an_invalid_environment_with_one_log_line(monkeypatch, caplog, capsys):
    monkeypatch.setenv("DATABASE_URL", "mysql://app:hunter2@db/x")
    monkeypatch.setenv("REQUEST_TIMEOUT", "-3")
    with caplog.at_level(logging.ERROR, logger="webapp.lifecycle"), pytest.raises(SystemExit) as stopped:
        hooks.check_config()
    assert stopped.value.code == 1
    [record] = caplog.records
    assert record.getMessage() == "invalid configuration; not starting"
    assert set(record.problems) == {"DATABASE_URL", "REQUEST_TIMEOUT"}
    assert "hunter2" not in caplog.text
    assert capsys.readouterr().err == ""  # stderr carries nothing: platforms merge it into the log stream


def test_a_valid_environment_passes_the_masters_check(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db/x")
    monkeypatch.delenv("REQUEST_TIMEOUT", raising=False)
    hooks.check_config()  # returns: no SystemExit
