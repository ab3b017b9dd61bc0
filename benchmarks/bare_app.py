"""The HTTP baseline: a bare Flask app answering every request with a small constant JSON body.

Served by gunicorn with the project's own ``gunicorn.conf.py`` (same worker class,
threads, keep-alive and limits) as ``benchmarks.bare_app:app``, it measures what
gunicorn, Flask routing and JSON serialisation cost with no ledger behind them:
the ceiling the service cannot pass on the same machine.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify

app = Flask(__name__)

#: About the size of a balance answer; the same for every route and method.
_BODY = {"username": "bare", "balance": 1000, "version": 1}


@app.route("/", defaults={"path": ""}, methods=["GET", "POST"])
@app.route("/<path:path>", methods=["GET", "POST"])
def constant(path: str) -> Response:
    return jsonify(_BODY)
