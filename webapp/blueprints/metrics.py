"""Metrics blueprint: /metrics in the Prometheus text format, not open to the world."""

from __future__ import annotations

import hmac
import ipaddress

from flask import Blueprint, Response, abort, request
from prometheus_client import CONTENT_TYPE_LATEST

from webapp.observability import Metrics


def metrics_blueprint(metrics: Metrics, token: str | None) -> Blueprint:
    """/metrics for a bearer token when METRICS_TOKEN is set; else for loopback callers only."""
    bp = Blueprint("metrics", __name__)

    @bp.get("/metrics")
    def scrape() -> Response:
        if not _allowed(token):
            abort(404)  # do not even admit the endpoint exists
        # content_type, not mimetype: Flask would append a second "; charset=utf-8" to a text/* mimetype.
        return Response(metrics.render(), content_type=CONTENT_TYPE_LATEST)

    return bp


def _allowed(token: str | None) -> bool:
    if token:
        sent = request.headers.get("Authorization", "")
        # Constant-time comparison: response timing must not reveal the token prefix.
        return hmac.compare_digest(sent.encode(), f"Bearer {token}".encode())
    try:
        return ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        return False
