"""The worker's side of the wire: a request arrives whole, within a deadline, or is answered in JSON.

A sync worker serves one connection at a time, so a client that sends slowly holds a worker.
Behind the buffering proxy (deploy/) requests arrive whole and at once; exposed directly, the
draining worker (workers.py) uses this module to:
  - give headers and body together one deadline from accept (CLIENT_READ_TIMEOUT, like nginx's
    client_header_timeout/client_body_timeout), after which the client gets a JSON 408;
  - read the whole body before the app runs (as the proxy would), so a broken chunked framing is
    a 400, a chunked body over MAX_BODY_BYTES a 413, and the app never waits on a socket;
  - answer whatever gunicorn's parser rejects (400/414/431/...) in the service's error shape.

gunicorn has no public API for any of this. Relied upon: SyncWorker.handle/handle_request/
handle_error, its parser reading through the socket's recv(), req.headers, req.body (the
WSGI input) and req.unreader, ChunkedReader.parse_chunk_size, req._expected_100_continue,
util.close_graceful. tests/functional/
test_hostile_clients.py fails if any of them moves.
"""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from gunicorn.http import errors as gunicorn_errors
from gunicorn.http.body import Body, ChunkedReader
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge, RequestTimeout

from webapp.web.errors import code_for, error_body
from webapp.web.pipeline import REQUEST_ID_HEADER, request_id_for

_REQUEST_ID_NAME = REQUEST_ID_HEADER.upper()  # as gunicorn's parser spells header names


class ClientReadTimeout(RequestTimeout):
    """The request's headers and body did not arrive within CLIENT_READ_TIMEOUT."""

    description = "the request did not arrive in time; send it whole and at once"


class BodyTooLarge(RequestEntityTooLarge):
    """A body over MAX_BODY_BYTES, told by its Content-Length, its chunk sizes or the bytes that came."""


class MalformedBody(BadRequest):
    """The body ended before its framing said it would."""


class LimitedChunkedReader(ChunkedReader):
    """gunicorn's chunked reader, refusing a body as soon as its chunk-size lines announce more than max_bytes.

    The stock reader waits for a chunk's data before anyone can count it: a chunk size over the
    limit (or `ffffffffffffffffff`) held the worker until the read deadline, then got a 408.
    """

    def __init__(self, req: Any, unreader: Any, max_bytes: int):
        super().__init__(req, unreader)
        self.max_bytes = max_bytes
        self.announced = 0

    def parse_chunk_size(self, unreader: Any, data: Any = None) -> tuple[int, Any]:
        size, rest = super().parse_chunk_size(unreader, data)
        self.announced += size
        if self.announced > self.max_bytes:
            raise BodyTooLarge(f"request body exceeds {self.max_bytes} bytes")
        return size, rest


class DeadlineSocket(socket.socket):
    """A client socket whose reads share one deadline: the whole request must have arrived by then.

    A timeout per read would not do: a client sending a byte a second never lets one expire.
    """

    read_deadline: float | None = None

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if self.read_deadline is None:
            return super().recv(bufsize, flags)
        try:
            # Usually the bytes are there already: no poll, no timeout system calls.
            return super().recv(bufsize, flags | socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
        remaining = self.read_deadline - time.monotonic()
        if remaining <= 0:
            raise ClientReadTimeout()
        self.settimeout(remaining)
        try:
            return super().recv(bufsize, flags)
        except TimeoutError:
            # Not an OSError from here on: gunicorn would log a socket error and answer nothing.
            raise ClientReadTimeout() from None
        finally:
            self.settimeout(None)  # writes (the response) are not bound by the read deadline

    def shutdown(self, how: int) -> None:
        # gunicorn's close_graceful half-closes, then drains with a timeout of its own: our
        # deadline must not fire in there, outside any try that could answer it.
        self.read_deadline = None
        super().shutdown(how)


def with_read_deadline(client: socket.socket, seconds: float) -> DeadlineSocket:
    """The same connection as a DeadlineSocket whose reads must all be done `seconds` from now."""
    # detach() hands the file descriptor over: no system call, the connection is untouched.
    wrapped = DeadlineSocket(client.family, client.type, client.proto, fileno=client.detach())
    wrapped.read_deadline = time.monotonic() + seconds
    return wrapped


def end_read_deadline(client: Any) -> None:
    """From here on the app's own limits apply (REQUEST_TIMEOUT, gunicorn's timeout)."""
    if isinstance(client, DeadlineSocket):
        client.read_deadline = None


def buffer_body(req: Any, client: Any, max_bytes: int) -> None:
    """Read req's whole body now, as a buffering proxy would, and hand the app an in-memory copy.

    Raises BodyTooLarge, MalformedBody, gunicorn's chunk errors, or ClientReadTimeout (from the socket).
    """
    headers = dict(req.headers)  # names upper-cased by gunicorn; duplicates were refused for framing headers
    if "TRANSFER-ENCODING" in headers:  # gunicorn accepts it only when it ends with chunked
        _send_continue(req, client)
        # Not one byte read yet (gunicorn parses the body lazily): swap in a reader that counts
        # each chunk's announced size before waiting for its data.
        req.body = Body(LimitedChunkedReader(req, req.unreader, max_bytes))
        try:
            # Trap: werkzeug stops reading a chunked body at MAX_CONTENT_LENGTH without asking
            # whether more follows, so an oversized body was cut there and accepted. One byte
            # more than allowed tells the two apart.
            data = req.body.read(max_bytes + 1)
        except gunicorn_errors.NoMoreData:
            raise MalformedBody("the chunked body ended before its last chunk") from None
        if len(data) > max_bytes:
            raise BodyTooLarge(f"request body exceeds {max_bytes} bytes")
    elif "CONTENT-LENGTH" in headers:
        length = int(headers["CONTENT-LENGTH"])  # gunicorn checked it is a number
        if length > max_bytes:
            raise BodyTooLarge(f"request body exceeds {max_bytes} bytes")  # unread: 100-continue never sent
        _send_continue(req, client)
        data = req.body.read(length) if length else b""
        if len(data) < length:
            raise MalformedBody("the body is shorter than its Content-Length")
    else:
        # RFC 9112 6.3: a request with neither header has no body. gunicorn would read one
        # until the client closes the connection: a POST without a length held a worker.
        data = b""
    req.body = io.BytesIO(data)  # what gunicorn passes on as wsgi.input


def _send_continue(req: Any, client: Any) -> None:
    """Answer Expect: 100-continue before reading the body (the client waits for it)."""
    # gunicorn sends it when it builds the WSGI environ, after our read; its flag is private
    # (tests/functional/test_hostile_clients.py fails if it moves), so it is cleared here.
    if getattr(req, "_expected_100_continue", False):
        client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        req._expected_100_continue = False


# gunicorn's own answers (gunicorn.workers.base.Worker.handle_error): status and message, first match wins.
_GUNICORN_ANSWERS: tuple[tuple[type[Exception], int, str], ...] = (
    (gunicorn_errors.LimitRequestLine, 414, "the request line is too long"),
    (gunicorn_errors.LimitRequestHeaders, 431, "the request headers are too large or too many"),
    (gunicorn_errors.UnsupportedTransferCoding, 501, "unsupported transfer coding"),
    (gunicorn_errors.ExpectationFailed, 417, "unsupported Expect header"),
    (gunicorn_errors.InvalidResponseHeader, 500, "internal error; quote the request id"),
    (gunicorn_errors.InvalidResponseHeaderName, 500, "internal error; quote the request id"),
    (gunicorn_errors.ConfigurationProblem, 500, "internal error; quote the request id"),
    (gunicorn_errors.InvalidHTTPVersion, 400, "malformed request: unsupported HTTP version"),
    (gunicorn_errors.InvalidRequestLine, 400, "malformed request line"),
    (gunicorn_errors.InvalidRequestMethod, 400, "malformed request method"),
    (gunicorn_errors.InvalidChunkSize, 400, "malformed chunked body: bad chunk size"),
    (gunicorn_errors.ChunkMissingTerminator, 400, "malformed chunked body: missing CRLF"),
    (gunicorn_errors.InvalidChunkExtension, 400, "malformed chunked body: bad chunk extension"),
    (gunicorn_errors.ParseException, 400, "malformed request"),  # every other parse error
)


def answer_for(exc: BaseException) -> tuple[int, str, str] | None:
    """(status, code, message) for an error the client caused; None for anything else (ours: a 500)."""
    if isinstance(exc, HTTPException) and exc.code:
        return exc.code, code_for(exc.code), exc.description or exc.name
    for kind, status, message in _GUNICORN_ANSWERS:
        if isinstance(exc, kind):
            return status, code_for(status), message
    return None


def request_id(req: Any, new_id: Callable[[], str]) -> str:
    """The client's X-Request-ID if sane (the pipeline's rule), else one from new_id()."""
    incoming = None
    for name, value in getattr(req, "headers", None) or ():
        if name == _REQUEST_ID_NAME:
            incoming = value
    return request_id_for(incoming, new_id)


def error_bytes(status: int, code: str, message: str, request_id: str) -> bytes:
    """A whole HTTP/1.1 response in the service's error shape, for a connection the app never saw."""
    body = json.dumps(error_body(code, message, request_id), separators=(",", ":")).encode() + b"\n"
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Request-ID: {request_id}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
