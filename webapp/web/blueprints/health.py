"""Health blueprint: /livez (process), /readyz (dependencies), /healthz (the flat form, for older probes)."""

from __future__ import annotations

from flask import Blueprint
from flask.typing import ResponseReturnValue

from webapp.services.health import DISABLED, OK, HealthService


def health_blueprint(health: HealthService) -> Blueprint:
    """Probe routes; they take no transaction and no request deadline."""
    bp = Blueprint("health", __name__)

    @bp.get("/livez")
    def livez() -> ResponseReturnValue:
        # Touches nothing external: a database outage must not get the process restarted.
        return {"status": "ok"}

    @bp.get("/readyz")
    def readyz() -> ResponseReturnValue:
        if health.stopping:
            return {"status": "shutting_down", "checks": {}}, 503
        healthy, checks = health.check()
        if not healthy:
            return {"status": "unavailable", "checks": checks}, 503
        # A cache that is not configured is no fault: degraded only when a configured one fails.
        status = "ok" if all(v in (OK, DISABLED) for v in checks.values()) else "degraded"
        return {"status": status, "checks": checks}, 200

    @bp.get("/healthz")
    def healthz() -> ResponseReturnValue:
        # Kept for probes written against the first contract: a flat {name: "ok" | reason}, 503 on a failure.
        healthy, checks = health.check()
        return checks, 200 if healthy else 503

    return bp
