"""webapp: production service patterns in Python. `gunicorn 'webapp:create_app()'` serves it.

Importing the package imports nothing else: gunicorn's settings (webapp.gunicorn.settings) must set
PROMETHEUS_MULTIPROC_DIR before prometheus_client is first imported, and create_app (webapp/app.py)
imports all of the app. So create_app is looked up on first use (PEP 562's module __getattr__).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from webapp.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from webapp.app import create_app

        return create_app
    raise AttributeError(f"module 'webapp' has no attribute {name!r}")
