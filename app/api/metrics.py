"""``GET /metrics``: Prometheus exposition (no token)."""

from __future__ import annotations

from flask import Blueprint, Response

from app.extensions import observability

bp = Blueprint("metrics", __name__)

# The classic text format, which every Prometheus version scrapes.
_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@bp.get("/metrics")
def metrics() -> Response:
    return Response(observability().exposition(), mimetype=None, content_type=_CONTENT_TYPE)
