"""Request parameters: the query string and a JSON object body, validated into types.

A parameter may come from the query string (the original style) or the JSON body.
Each given value is validated on its own; if two sources (or a repeated query
key, or a repeated JSON key) give different values, the request is rejected with
``conflicting_parameters`` rather than guessing which one the client meant.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import TypeVar

from flask import Request
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge

from app.config import MAX_TIMEOUT_MS, MIN_TIMEOUT_MS
from app.ledger.errors import InvalidInput, VersionConflict
from app.ledger.model import MAX_AMOUNT, MAX_HOLD_TIMEOUT_S, MIN_HOLD_TIMEOUT_S

T = TypeVar("T")

USERNAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DIGITS = re.compile(r"[0-9]{1,20}")
_IF_MATCH = re.compile(r'(?:"([0-9]{1,19})"|([0-9]{1,19}))')
_TOKEN = re.compile(r"[\x21-\x7e]{1,256}")
_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")
MAX_PAGE_LIMIT = 500
#: The largest sequence a record can have (a bigint in PostgreSQL).
MAX_SEQUENCE = 2**63 - 1
DEFAULT_PAGE_LIMIT = 50


class Params:
    """The parameters of one request, from its query string and JSON body."""

    __slots__ = ("_body", "_query", "_repeated")

    def __init__(
        self,
        query: MultiDict[str, str],
        body: Mapping[str, object],
        repeated: Mapping[int, str] | None = None,
    ) -> None:
        self._query = query
        self._body = body
        # id() of each JSON object in the body that gives a key twice with different
        # values -> that key. Objects stay alive inside ``body``, so ids are stable.
        self._repeated = repeated or {}
        self.require_unique_keys(body)

    @classmethod
    def from_request(cls, request: Request) -> Params:
        body, repeated = _json_object(read_body(request))
        return cls(request.args, body, repeated)

    def require_unique_keys(self, obj: object) -> None:
        """Refuse a JSON object of the body that gives one key two different values.

        The top level is checked always; a caller checks nested objects that carry
        parameters (batch items). Objects in ignored fields are never checked.
        """
        key = self._repeated.get(id(obj))
        if key is not None:
            raise InvalidInput("conflicting_parameters", f"The JSON body gives {key} more than once.")

    def get(self, name: str, parse: Callable[[object], T]) -> T | None:
        """The validated value of ``name``, or ``None`` when no source gives it."""
        values = [parse(value) for value in self._query.getlist(name)]
        body_value = self._body.get(name)
        if body_value is not None:
            values.append(parse(body_value))
        if not values:
            return None
        first = values[0]
        if any(value != first for value in values[1:]):
            raise InvalidInput(
                "conflicting_parameters",
                f"The {name} parameter is given more than once with different values.",
            )
        return first

    def require(self, name: str, parse: Callable[[object], T]) -> T:
        value = self.get(name, parse)
        if value is None:
            raise InvalidInput("missing_parameter", f"The {name} parameter is required.")
        return value

    @property
    def body(self) -> Mapping[str, object]:
        return self._body

    def query_keys(self) -> list[str]:
        """The names the query string gives."""
        return list(dict.keys(self._query))

    def gives(self, name: str) -> bool:
        """Whether the query string or the body gives ``name`` (a dict lookup each)."""
        return name in self._query or name in self._body

    def query_metadata(self) -> dict[str, list[str]]:
        """The ``metadata.<key>=<value>`` pairs of the query string: key -> every value given."""
        query = self._query
        # The names straight from the dict (a MultiDict is one): a C loop, no list per key.
        names = [key for key in dict.keys(query) if key.startswith("metadata.")] if query else ()
        return {key[9:]: query.getlist(key) for key in names} if names else {}


def read_body(request: Request) -> bytes:
    """The whole request body, exactly as declared, within ``max_content_length``.

    A body shorter than its ``Content-Length`` (the client went away mid-upload) is
    refused rather than acted on. A chunked body is read from the server's stream
    directly, so that one over the limit is a 413 and never silently cut short.
    """
    environ = request.environ
    if "CONTENT_LENGTH" not in environ and "HTTP_TRANSFER_ENCODING" not in environ:
        return b""  # the common case, a query-string request: neither a length nor chunked
    limit = request.max_content_length
    declared = request.content_length
    if declared == 0:
        return b""
    if declared is not None:
        data = request.get_data(cache=True)  # Werkzeug answers 413 past the limit
        if len(data) != declared:
            raise InvalidInput("invalid_json", "The body is shorter than its Content-Length.")
        return data
    if "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return b""  # neither a length nor chunked: HTTP/1.1 says there is no body
    if not environ.get("wsgi.input_terminated"):
        return b""  # a stream the server does not terminate cannot be read safely
    stream = environ["wsgi.input"]
    data = stream.read() if limit is None else stream.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise RequestEntityTooLarge()
    return bytes(data)


def _json_object(data: bytes) -> tuple[Mapping[str, object], dict[int, str]]:
    """The body's JSON object, and which of its objects repeat a key with another value."""
    if not data.strip():
        return {}, {}
    repeated: dict[int, str] = {}

    def keep_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
        result: dict[str, object] = {}
        for key, value in pairs:
            if key in result and result[key] != value:
                repeated.setdefault(id(result), key)
            result[key] = value
        return result

    try:
        value = json.loads(data, object_pairs_hook=keep_pairs)
    except (ValueError, RecursionError):
        raise InvalidInput("invalid_json", "The body is not valid JSON.") from None
    if not isinstance(value, dict):
        raise InvalidInput("invalid_json", "The body must be a JSON object.")
    return value, repeated


# -- parsers: each takes a raw value (str from a query, any JSON value) -------------


def parse_username(value: object) -> str:
    if not isinstance(value, str) or USERNAME_PATTERN.fullmatch(value) is None:
        raise InvalidInput(
            "invalid_username", "A username is 1 to 64 characters from A-Z, a-z, 0-9, '_', '.' and '-'."
        )
    return value


def _whole_number(value: object, code: str, what: str, low: int, high: int) -> int:
    """An int in ``[low, high]`` from a JSON integer or a string of plain digits."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value) is not None:
        number = int(value)
    if number is None or not low <= number <= high:
        raise InvalidInput(code, f"{what} must be a whole number from {low} to {high}.")
    return number


def parse_amount(value: object) -> int:
    return _whole_number(value, "invalid_amount", "The amount", 1, MAX_AMOUNT)


def parse_amount_bound(value: object) -> int:
    """``min_amount``/``max_amount`` of a history filter: a whole number from 0 to 10^15."""
    return _whole_number(value, "invalid_parameter", "An amount bound", 0, MAX_AMOUNT)


def parse_opening_balance(value: object) -> int:
    return _whole_number(value, "invalid_amount", "The balance", 0, MAX_AMOUNT)


def parse_limit(value: object) -> int:
    return _whole_number(value, "invalid_limit", "The limit", 1, MAX_PAGE_LIMIT)


def parse_checkpoint_sequence(value: object) -> int:
    """``from`` of ``/admin/verify``: a record's sequence (the store checks it is a checkpoint's)."""
    return _whole_number(value, "invalid_parameter", "The from parameter", 1, MAX_SEQUENCE)


def parse_sequence(value: object) -> int:
    """``sequence`` of ``GET /account/coins``: a point in the audit trail (0: before every record)."""
    return _whole_number(value, "invalid_parameter", "The sequence parameter", 0, MAX_SEQUENCE)


def parse_cursor(value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 128:
        raise InvalidInput("invalid_cursor", "The cursor is not one this server issued.")
    return value


def page_request(params: Params) -> tuple[int, str | None]:
    """The ``limit`` (default ``DEFAULT_PAGE_LIMIT``) and ``cursor`` of a paged read."""
    return params.get("limit", parse_limit) or DEFAULT_PAGE_LIMIT, params.get("cursor", parse_cursor)


def parse_token(value: object) -> str:
    # "Bearer" alone could only ever be presented as "Bearer Bearer".
    if not isinstance(value, str) or _TOKEN.fullmatch(value) is None or value.lower() == "bearer":
        raise InvalidInput("invalid_token", "A token is 1 to 256 printable ASCII characters without spaces.")
    return value


# -- headers ----------------------------------------------------------------------


def parse_timeout_ms(header: str | None, default_ms: int) -> int:
    """``X-Timeout-Ms``: the operation's deadline in milliseconds."""
    if header is None:
        return default_ms
    return _whole_number(header.strip(), "invalid_timeout", "X-Timeout-Ms", MIN_TIMEOUT_MS, MAX_TIMEOUT_MS)


def parse_if_match(header: str | None) -> int | None:
    """``If-Match: "7"``: the version the caller expects; ``*`` or absent: any."""
    if header is None or header.strip() == "*":
        return None
    match = _IF_MATCH.fullmatch(header.strip())
    if match is None:
        raise VersionConflict('If-Match must name one version, such as "7".')
    return int(match.group(1) or match.group(2))


def parse_idempotency_key(header: str | None) -> str | None:
    """``Idempotency-Key``: 1 to 255 printable ASCII characters."""
    if header is None:
        return None
    if _IDEMPOTENCY_KEY.fullmatch(header) is None:
        raise InvalidInput(
            "invalid_idempotency_key", "An Idempotency-Key is 1 to 255 printable ASCII characters."
        )
    return header


def parse_hold_timeout(value: object) -> int:
    return _whole_number(value, "invalid_timeout", "timeout_s", MIN_HOLD_TIMEOUT_S, MAX_HOLD_TIMEOUT_S)
