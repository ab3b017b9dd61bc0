"""``GET /openapi.json`` and ``GET /docs``: the service's description, for programs and people.

The page is Swagger UI 5 (OpenAPI 3.1 support) from the ``flask-swagger-ui`` package,
whose wheel ships Swagger UI's built files; they are served from here, so the page
works with no internet. Its Content-Security-Policy lets the browser load nothing
from anywhere else, which the browser test relies on to prove it.
"""

from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import Path

import orjson
from flask import Blueprint, Response, abort, send_file, url_for

from app.openapi import build_document

bp = Blueprint("docs", __name__)

#: Where flask-swagger-ui keeps Swagger UI's distribution files.
SWAGGER_UI_DIR = Path(str(files("flask_swagger_ui").joinpath("dist")))

#: The files /docs/assets serves: Swagger UI's own, and the page's initializer below.
_ASSET_TYPES = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
    "goledger-docs.js": "text/javascript",
}
ASSET_NAMES = sorted(_ASSET_TYPES)

# In a file of its own rather than inline, so that the page's policy can forbid inline scripts.
_INITIALIZER = """\
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
"""

_PAGE = """\
<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <meta name="swagger-ui-version" content="{version}">
  <title>GoLedger API</title>
  <link rel="stylesheet" href="{css}">
  <link rel="icon" type="image/png" href="{icon}">
</head>
<body>
  <div id="swagger-ui" data-spec-url="{spec}"></div>
  <script src="{bundle}"></script>
  <script src="{initializer}"></script>
</body>
</html>
"""

# Swagger UI sets inline styles (style attributes), and shows images as data: URLs.
_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@functools.cache
def swagger_ui_version() -> str:
    """The bundled Swagger UI's version, such as ``5.34.0``."""
    return (SWAGGER_UI_DIR / "VERSION").read_text(encoding="utf-8").strip().removeprefix("v")


@functools.cache
def _document_bytes() -> bytes:
    # The document never changes while the process runs: built and encoded once.
    return orjson.dumps(build_document(ASSET_NAMES))


@bp.get("/openapi.json")
def openapi() -> Response:
    return Response(_document_bytes(), mimetype="application/json")


@bp.get("/docs")
def docs() -> Response:
    def asset(name: str) -> str:
        return url_for("docs.asset", asset=name)

    page = _PAGE.format(
        version=swagger_ui_version(),
        css=asset("swagger-ui.css"),
        icon=asset("favicon-32x32.png"),
        spec=url_for("docs.openapi"),
        bundle=asset("swagger-ui-bundle.js"),
        initializer=asset("goledger-docs.js"),
    )
    response = Response(page, mimetype="text/html")
    response.headers["Content-Security-Policy"] = _CONTENT_SECURITY_POLICY
    return response


@bp.get("/docs/assets/<asset>")
def asset(asset: str) -> Response:
    mimetype = _ASSET_TYPES.get(asset)
    if mimetype is None:
        abort(404)
    if asset == "goledger-docs.js":
        return Response(_INITIALIZER, mimetype=mimetype)
    return send_file(SWAGGER_UI_DIR / asset, mimetype=mimetype, max_age=3600)
