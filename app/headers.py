"""Headers every answer carries (the contract's conventions).

``X-Content-Type-Options: nosniff`` on every answer; ``Cache-Control: no-store`` on
answers under ``/account`` and ``/admin``, which hold balances, histories and tokens
that no shared cache or browser history may keep. ``app.observability.ObservedApp``
adds them to every answer the app gives, errors included, as it starts the response.
Answers gunicorn itself writes (malformed requests that never reach the app) carry
``nosniff`` too (``app.serving.write_json_error``).
"""

from __future__ import annotations

_PRIVATE_PREFIXES = ("/account", "/admin")
_PUBLIC = (("X-Content-Type-Options", "nosniff"),)
_PRIVATE = (*_PUBLIC, ("Cache-Control", "no-store"))


def security_headers(path_info: str) -> tuple[tuple[str, str], ...]:
    """The headers the answer to a request for ``path_info`` (the WSGI ``PATH_INFO``) carries.

    The path is taken as Flask's ``request.path`` reads it: leading slashes count once.
    """
    if ("/" + path_info.lstrip("/")).startswith(_PRIVATE_PREFIXES):
        return _PRIVATE
    return _PUBLIC
