"""``GET /system/health``: liveness and the state of the store's components."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from app.extensions import store

bp = Blueprint("health", __name__)


@bp.get("/system/health")
def health() -> Response:
    report = store().health()
    components = {
        "database": report.database,
        "audit_log": report.audit_log,
        "performance": report.performance,
    }
    if report.database and report.audit_log:
        status = "healthy" if report.performance else "degraded"
    else:
        status = "unhealthy"
    response = jsonify(
        {
            "status": status,
            "uptime_seconds": round(report.uptime_seconds, 3),
            "operation_count": report.operation_count,
            "components": components,
        }
    )
    # The contract: 200 only when healthy; degraded and unhealthy are both 503.
    response.status_code = 200 if status == "healthy" else 503
    return response
