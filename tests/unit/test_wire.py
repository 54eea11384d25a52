"""webapp.gunicorn.wire without sockets: which answer each rejection gets, and the bytes of that answer."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from gunicorn.http import errors as gunicorn_errors

from webapp.gunicorn import wire
from webapp.web.pipeline import request_id_factory


@pytest.mark.parametrize("exc, status, code", [
    (wire.ClientReadTimeout(), 408, "request_timeout"),
    (wire.BodyTooLarge("too big"), 413, "payload_too_large"),
    (wire.MalformedBody("cut short"), 400, "bad_request"),
    (gunicorn_errors.LimitRequestLine(9000, 4094), 414, "uri_too_long"),
    (gunicorn_errors.LimitRequestHeaders("limit request headers fields"), 431, "request_header_fields_too_large"),
    (gunicorn_errors.InvalidHTTPVersion("HTTP/9.9"), 400, "bad_request"),
    (gunicorn_errors.InvalidChunkSize(b"ZZ"), 400, "bad_request"),
    (gunicorn_errors.UnsupportedTransferCoding("gzip"), 501, "not_implemented"),
    (gunicorn_errors.InvalidResponseHeader("X-Bad"), 500, "internal_error"),  # the app's header: our fault
    (gunicorn_errors.InvalidSchemeHeaders(), 400, "bad_request"),  # any other parse error
])
def test_each_rejection_gets_its_status_and_code(exc: Exception, status: int, code: str):
    answer = wire.answer_for(exc)
    assert answer is not None and answer[:2] == (status, code)
    assert "ZZ" not in answer[2] and "HTTP/9.9" not in answer[2]  # the client's bytes are never echoed


def test_anything_else_is_not_the_clients_fault():
    assert wire.answer_for(RuntimeError("bug")) is None


def test_the_error_bytes_are_one_http_response_in_the_services_error_shape():
    raw = wire.error_bytes(408, "request_timeout", "too slow", "rid-1")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert lines[0] == "HTTP/1.1 408 Request Timeout"
    assert headers["Content-Length"] == str(len(body)) and headers["Connection"] == "close"
    assert headers["X-Request-ID"] == "rid-1" and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"error": {"code": "request_timeout", "message": "too slow", "request_id": "rid-1"}}


@pytest.mark.parametrize("sent, kept", [("abc-123", True), ("bad id\r\nX-Evil: 1", False), ("x" * 200, False)])
def test_a_sane_request_id_is_kept_an_insane_one_replaced(sent: str, kept: bool):
    new_id = request_id_factory()
    rid = wire.request_id(SimpleNamespace(headers=[("X-REQUEST-ID", sent)]), new_id)
    assert (rid == sent) is kept
    assert wire.request_id(None, new_id) != wire.request_id(None, new_id)  # a request line that never parsed
