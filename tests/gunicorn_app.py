"""The real app plus one test-only route, for gunicorn tests that need a request to take a while."""

from __future__ import annotations

import logging
import time

from flask import Flask

from webapp import create_app as create_service


def create_app() -> Flask:
    """create_app() as gunicorn runs it, plus GET /test/sleep/<seconds> (never part of the service)."""
    app = create_service()

    @app.get("/test/sleep/<float:seconds>")
    def sleep(seconds: float) -> dict[str, float]:
        # Tests wait for this line (instead of guessing with a sleep) to know the request is in a worker.
        logging.getLogger("tests.gunicorn_app").info("test sleep started")
        time.sleep(seconds)  # a signal mid-sleep does not cut it short (PEP 475): the request finishes
        return {"slept": seconds}

    return app
