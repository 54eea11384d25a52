"""Meta blueprint: the OpenAPI document, kept in the repository and served as a file."""

from __future__ import annotations

from importlib import resources

from flask import Blueprint, Response


def meta_blueprint() -> Blueprint:
    """GET /openapi.json: the API's contract (read once, when the app is built)."""
    bp = Blueprint("meta", __name__)
    document = resources.files("webapp").joinpath("openapi.json").read_bytes()

    @bp.get("/openapi.json")
    def openapi() -> Response:
        return Response(document, mimetype="application/json")

    return bp
