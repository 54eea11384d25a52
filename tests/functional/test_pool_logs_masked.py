"""The pool's own warnings (psycopg_pool quoting libpq) never carry a password, whatever the URL looks like."""

from __future__ import annotations

import json
import time

import pytest
from flask import Flask

from webapp import create_app
from webapp.settings import Config


@pytest.mark.parametrize(("url", "secret"), [
    # libpq reads host "ss@w0rd@127.0.0.1" and quotes it in every "failed to resolve host" warning.
    ("postgresql://u:p@ss@w0rd@127.0.0.1:1/x", "w0rd"),
    ("postgresql://u:p%40ss%2Fw0rd@127.0.0.1:1/x", "w0rd"),
    ("postgresql://u@127.0.0.1:1/x?password=s3cr3t-w0rd", "w0rd"),
])
def test_the_pools_connection_warnings_never_show_the_password(url: str, secret: str, capsys, apps: list[Flask]):
    # Config built directly: load_config refuses the first URL, but the pool must not leak it either.
    app = create_app(Config(database_url=url, db_pool_min=1, db_pool_timeout=0.5))
    apps.append(app)
    deadline = time.monotonic() + 10
    lines: list[str] = []
    while time.monotonic() < deadline:  # the pool retries in the background, logging each failure
        lines += capsys.readouterr().out.splitlines()
        if sum("error connecting" in line for line in lines) >= 2:
            break
        time.sleep(0.1)
    warnings = [json.loads(line) for line in lines if "error connecting" in line]
    assert len(warnings) >= 2, lines
    assert all(w["level"] == "WARNING" for w in warnings)
    assert not [line for line in lines if secret in line]
