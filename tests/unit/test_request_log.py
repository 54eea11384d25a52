"""RequestLog: the hand-formatted request line is valid JSON carrying exactly what it was given."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from webapp.observability import HANDLER_NAME, RequestLog, configure_logging


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    configure_logging("info", buffer)
    yield buffer
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.parametrize(
    "raw_path",
    [
        "/users/1",
        '/users/"quoted"',
        "/back\\slash",
        "/control-\x00-\x1f-\x7f-\t-\n",
        "/unicode-é-☃-😀",
        "/lone-surrogate-\udc80",  # what WSGI decoding leaves of an invalid UTF-8 byte
        "/json-looking-\", \"status\": 200, \"x\": \"",
    ],
)
def test_any_path_becomes_one_json_line_with_the_same_value(stream: io.StringIO, raw_path: str):
    RequestLog(logging.getLogger("webapp.http")).write(
        "GET", "/users/<id:user_id>", raw_path, 200, 1.25, "req-1", "127.0.0.1", quiet=False
    )
    assert stream.getvalue().count("\n") == 1  # one line, whatever the path held
    (line,) = lines(stream)
    assert line["raw_path"] == raw_path
    assert stream.getvalue().isascii()  # escaped like the encoder's ensure_ascii default


def test_the_fast_line_and_the_logging_line_carry_the_same_fields(stream: io.StringIO):
    request_log = RequestLog(logging.getLogger("webapp.http"))
    args = ("POST", "/orders", "/orders", 201, 12.5, "req-2", None)
    request_log.write(*args, quiet=False)  # INFO: the hand-formatted line
    request_log.write(*args[:3], 503, *args[4:], quiet=False)  # ERROR: through logging proper
    fast, slow = lines(stream)
    assert fast["level"] == "INFO" and slow["level"] == "ERROR"
    assert list(fast)[:5] == list(slow)[:5] == ["time", "level", "logger", "pid", "message"]
    fields = ("method", "path", "raw_path", "status", "duration_ms", "request_id", "remote_addr")
    assert [fast[k] for k in fields] == ["POST", "/orders", "/orders", 201, 12.5, "req-2", None]
    assert [slow[k] for k in fields] == ["POST", "/orders", "/orders", 503, 12.5, "req-2", None]
    assert fast.keys() == slow.keys()


def test_numbers_keep_their_json_types(stream: io.StringIO):
    RequestLog(logging.getLogger("webapp.http")).write("GET", "/x", "/x", 200, 0.1, "r", "::1", quiet=False)
    (line,) = lines(stream)
    assert line["status"] == 200 and isinstance(line["status"], int)
    assert line["duration_ms"] == 0.1 and isinstance(line["duration_ms"], float)
