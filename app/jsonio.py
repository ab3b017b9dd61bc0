"""JSON responses through orjson: several times faster than the standard library.

``json_response`` builds an answer with its body and every header in one go (the
hot paths' way); ``jsonify`` goes through the same encoder. Only serialisation
changes. Request bodies are still parsed by the standard library (``app.params``),
which keeps integers of any size exact so that an out-of-range amount is reported
as ``invalid_amount`` rather than as bad JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import orjson
from flask import Response
from flask.json.provider import JSONProvider
from werkzeug.datastructures import Headers


class OrjsonProvider(JSONProvider):
    """Flask's JSON provider with orjson for ``jsonify`` and ``app.json.dumps``.

    orjson refuses integers beyond 64 bits; such a value (never one of the ledger's,
    whose balances are capped at 2^63-1) falls back to the standard library.
    """

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return _encode(obj).decode("utf-8")

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return json.loads(s, **kwargs)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        return Response(_encode(self._prepare_response_obj(args, kwargs)), mimetype="application/json")


def _encode(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":")).encode("utf-8")


class JsonResponse(Response):
    """An answer built whole by ``json_response``: started with its own headers, not a copy.

    ``get_wsgi_headers`` copies the headers to fix up what an answer may lack (an
    absolute ``Location``, a ``Content-Length``, none on a 204 or 304); an answer
    that needs none of that is started with its headers as they are.
    """

    def get_wsgi_headers(self, environ: Any) -> Headers:
        status = self.status_code
        if status < 200 or status in (204, 304):
            return super().get_wsgi_headers(environ)
        has_length = False
        for name, _ in self.headers:
            lowered = name.lower()
            if lowered in _FIXED_UP:
                return super().get_wsgi_headers(environ)
            has_length = has_length or lowered == "content-length"
        return self.headers if has_length else super().get_wsgi_headers(environ)


_FIXED_UP = frozenset({"location", "content-location"})


def json_response(payload: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Response:
    """``payload`` as a JSON answer, its ``Content-Type``, ``Content-Length`` and ``headers`` set at once.

    The same answer as ``jsonify`` plus ``response.headers.update(headers)``, without
    setting one header at a time (each a scan of the header list).
    """
    body = _encode(payload)
    all_headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers]
    return JsonResponse([body], status, all_headers)
