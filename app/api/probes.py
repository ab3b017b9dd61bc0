"""``GET /livez`` and ``GET /readyz``: the orchestrator's probes (no token).

``/livez`` never calls the store, so that a database outage makes an instance
unready (taken out of the load balancer) but never restarts it; ``/readyz`` asks
the store whether it takes writes now. ``/system/health`` stays the detailed report.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from app.extensions import store

bp = Blueprint("probes", __name__)


@bp.get("/livez")
def livez() -> Response:
    return jsonify({"status": "alive"})


@bp.get("/readyz")
def readyz() -> Response:
    reason = store().not_ready()
    if reason is None:
        return jsonify({"status": "ready"})
    response = jsonify({"status": "not_ready", "reason": reason})
    response.status_code = 503
    return response
