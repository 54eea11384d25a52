"""Metrics blueprint: /metrics in the Prometheus text format, not open to the world."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time

from flask import Blueprint, Response, abort, request

from webapp.observability.metrics import Metrics

log = logging.getLogger("webapp.metrics")

# A proxy sets one of these (nginx: X-Real-IP/X-Forwarded-For; RFC 7239: Forwarded). Behind a
# proxy on the same host every client arrives from loopback, so loopback alone proves nothing.
FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Real-IP")
# Refused scrapes are logged at most this often per worker: a scanner must not flood the log.
WARN_EVERY_SECONDS = 60.0


def metrics_blueprint(metrics: Metrics, token: str | None) -> Blueprint:
    """/metrics for a bearer token when METRICS_TOKEN is set; else for direct loopback callers only."""
    bp = Blueprint("metrics", __name__)
    warning = RateLimitedWarning(log, WARN_EVERY_SECONDS)

    @bp.get("/metrics")
    def scrape() -> Response:
        reason = _refusal(token)
        if reason is not None:
            metrics.scrape_refused(reason)
            warning.emit("refused a /metrics request", reason=reason, remote_addr=request.remote_addr)
            abort(404)  # do not even admit the endpoint exists
        # content_type, not mimetype: Flask would append a second "; charset=utf-8" to a text/* mimetype.
        return Response(metrics.render(), content_type=metrics.content_type)

    return bp


def _refusal(token: str | None) -> str | None:
    """Why this request may not read /metrics (a label value), or None when it may."""
    if token:
        sent = request.headers.get("Authorization", "")
        # Constant-time comparison: response timing must not reveal the token prefix.
        return None if hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()) else "bad_token"
    if any(name in request.headers for name in FORWARDING_HEADERS):
        return "proxied"
    try:
        return None if ipaddress.ip_address(request.remote_addr or "").is_loopback else "not_loopback"
    except ValueError:
        return "not_loopback"


class RateLimitedWarning:
    """A WARNING at most once per `every` seconds; the lines skipped meanwhile are counted in the next."""

    def __init__(self, logger: logging.Logger, every: float):
        self.logger, self.every = logger, every
        self.last = float("-inf")
        self.skipped = 0

    def emit(self, message: str, **fields: object) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            self.skipped += 1
            return
        self.logger.warning(message, extra={**fields, "skipped_since_last": self.skipped})
        self.last, self.skipped = now, 0
