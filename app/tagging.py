"""References, metadata and history filters: request parameters -> a ``Tag`` and a ``RecordFilter``.

Both come from the query string or a JSON body like every other parameter
(``app.params``). Metadata in a query string is ``metadata.<key>=<value>`` pairs (the
values are then strings); in a body it is an object. Every refusal names the field:
``invalid_reference``, ``invalid_metadata`` for what an operation carries, and
``invalid_parameter`` for a filter.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TypeVar

from app.ledger.errors import InvalidInput
from app.ledger.filters import MAX_METADATA_FILTERS, NO_FILTER, RecordFilter
from app.ledger.model import OperationType, Status, Tag
from app.ledger.records import make_tag, metadata_text
from app.params import USERNAME_PATTERN, Params, parse_amount_bound

T = TypeVar("T")

#: A reference: 1 to 128 printable ASCII characters.
REFERENCE_PATTERN = re.compile(r"[\x20-\x7e]{1,128}")
#: A metadata key (the username alphabet: ASCII letters, digits, ``_ . -``).
_METADATA_KEY = USERNAME_PATTERN
MAX_METADATA_KEYS = 32
MAX_METADATA_VALUE_CHARS = 256
MAX_METADATA_BYTES = 4096
#: Integer metadata values fit a signed 64-bit integer (what every JSON tool reads exactly).
MIN_METADATA_INTEGER, MAX_METADATA_INTEGER = -(2**63), 2**63 - 1
_PREFIX = "metadata."
_RECORD_TYPES = frozenset(kind.value for kind in OperationType)
_STATUSES = frozenset(status.value for status in Status)
#: The parameters of a paged read that are not filters.
_PAGING = frozenset({"username", "limit", "cursor"})
_ADMIN_PAGING = frozenset({"limit", "cursor"})
_FILTERS = frozenset(
    {
        "type", "status", "counterparty", "created_after", "created_before", "min_amount", "max_amount",
        "reference",
    }
)  # fmt: skip


def parse_reference(value: object) -> str:
    if not isinstance(value, str) or REFERENCE_PATTERN.fullmatch(value) is None:
        raise InvalidInput("invalid_reference", "reference must be 1 to 128 printable ASCII characters.")
    return value


def request_tag(params: Params, item: Mapping[str, object] | None = None) -> Tag | None:
    """The ``reference`` and ``metadata`` of an operation (``None``: neither given).

    ``item``: a batch item's object (then only it is read); otherwise the request's
    query string and body.
    """
    if item is not None:
        raw_reference, raw_metadata = item.get("reference"), item.get("metadata")
        return make_tag(
            None if raw_reference is None else parse_reference(raw_reference),
            None if raw_metadata is None else _metadata(params, raw_metadata),
        )
    query_metadata = params.query_metadata()
    if not query_metadata and not params.gives("reference") and not params.gives("metadata"):
        return None  # the common case: neither given, nothing more to read
    reference = params.get("reference", parse_reference)
    body_metadata = params.body.get("metadata")
    metadata = None if body_metadata is None else _metadata(params, body_metadata)
    if query_metadata:
        from_query = _metadata(params, _single_values(query_metadata))
        if metadata is not None and metadata != from_query:
            raise InvalidInput(
                "conflicting_parameters", "metadata is given in the query string and the body, differently."
            )
        metadata = from_query
    return make_tag(reference, metadata)


def _metadata(params: Params, value: object) -> str | None:
    """The canonical text of a metadata object (``None`` when it is empty), or ``invalid_metadata``."""
    if not isinstance(value, dict):
        raise InvalidInput("invalid_metadata", "metadata must be a JSON object.")
    params.require_unique_keys(value)
    if len(value) > MAX_METADATA_KEYS:
        raise InvalidInput(
            "invalid_metadata", f"metadata has {len(value)} keys; at most {MAX_METADATA_KEYS}."
        )
    for key, item in value.items():
        if not isinstance(key, str) or _METADATA_KEY.fullmatch(key) is None:
            raise InvalidInput(
                "invalid_metadata",
                "metadata keys are 1 to 64 characters from A-Z, a-z, 0-9, '_', '.' and '-'.",
            )
        if not _metadata_value(item):
            raise InvalidInput(
                "invalid_metadata",
                f"metadata.{key} must be a string of at most {MAX_METADATA_VALUE_CHARS} characters "
                "(no NUL, valid Unicode) or a 64-bit integer.",
            )
    text = metadata_text(value)
    if text is not None and len(text.encode()) > MAX_METADATA_BYTES:
        raise InvalidInput("invalid_metadata", f"metadata is over {MAX_METADATA_BYTES} bytes encoded.")
    return text


def _metadata_value(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return MIN_METADATA_INTEGER <= value <= MAX_METADATA_INTEGER
    if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE_CHARS or "\x00" in value:
        return False
    try:
        value.encode("utf-8")  # a lone surrogate (JSON "\ud800") has no encoding
    except UnicodeEncodeError:
        return False
    return True


def _single_values(pairs: Mapping[str, list[str]]) -> dict[str, str]:
    """``metadata.<key>`` query pairs as one value per key (a key given twice differently: refused)."""
    values: dict[str, str] = {}
    for key, given in pairs.items():
        if any(value != given[0] for value in given[1:]):
            raise InvalidInput(
                "conflicting_parameters", f"metadata.{key} is given more than once, differently."
            )
        values[key] = given[0]
    return values


# -- filters ------------------------------------------------------------------------


def request_filter(params: Params, *, admin: bool = False) -> RecordFilter:
    """The history filters of a paged read; an unknown query parameter is ``invalid_parameter``
    (``admin``: ``/admin/transactions``, which takes no ``username``)."""
    keys = params.query_keys()
    paging = _ADMIN_PAGING if admin else _PAGING
    unknown = [
        key for key in keys if key not in paging and key not in _FILTERS and not key.startswith(_PREFIX)
    ]
    if unknown:
        raise InvalidInput("invalid_parameter", f"Unknown parameter: {sorted(unknown)[0]}.")
    if not any(key in _FILTERS or key.startswith(_PREFIX) for key in (*keys, *params.body)):
        return NO_FILTER
    metadata = _metadata_filters(params)
    return RecordFilter(
        types=params.get("type", _filter("type", _types)),
        status=params.get("status", _filter("status", _status)),
        counterparty=params.get("counterparty", _filter("counterparty", _counterparty)),
        created_after=params.get("created_after", _filter("created_after", _timestamp)),
        created_before=params.get("created_before", _filter("created_before", _timestamp)),
        min_amount=params.get("min_amount", _filter("min_amount", parse_amount_bound)),
        max_amount=params.get("max_amount", _filter("max_amount", parse_amount_bound)),
        reference=params.get("reference", _filter("reference", parse_reference)),
        metadata=metadata,
    )


def _filter(name: str, parse: Callable[[object], T]) -> Callable[[object], T]:
    def parse_named(value: object) -> T:
        try:
            return parse(value)
        except (InvalidInput, ValueError, TypeError):
            raise InvalidInput("invalid_parameter", f"The {name} filter is malformed.") from None

    return parse_named


def _types(value: object) -> frozenset[str]:
    if not isinstance(value, str):
        raise ValueError(value)
    names = value.split(",")
    if not all(name in _RECORD_TYPES for name in names):
        raise ValueError(value)
    return frozenset(names)


def _status(value: object) -> str:
    if value not in _STATUSES:
        raise ValueError(value)
    return str(value)


def _counterparty(value: object) -> str:
    if not isinstance(value, str) or USERNAME_PATTERN.fullmatch(value) is None:
        raise ValueError(value)
    return value


#: RFC 3339: a date, ``T``, a time with up to microseconds, and ``Z`` or an offset.
TIMESTAMP_PATTERN = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-9]{2})"
)


def parse_time(name: str) -> Callable[[object], str]:
    """The parser of an RFC 3339 parameter ``name`` read as the time filters read theirs (in the
    records' own form); a malformed value is ``invalid_parameter`` naming it."""
    return _filter(name, _timestamp)


def _timestamp(value: object) -> str:
    """An RFC 3339 time, in the records' own form (UTC, microseconds, ``Z``), which sorts as text."""
    if not isinstance(value, str) or TIMESTAMP_PATTERN.fullmatch(value) is None:
        raise ValueError(value)
    try:
        moment = datetime.fromisoformat(value).astimezone(UTC)
    except OverflowError:  # an offset that takes it past year 1 or 9999
        raise ValueError(value) from None
    # isoformat, not strftime: "%Y" does not pad years before 1000, which would then sort wrongly as text.
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _metadata_filters(params: Params) -> tuple[tuple[str, str], ...]:
    pairs = params.query_metadata()
    if len(pairs) > MAX_METADATA_FILTERS:
        raise InvalidInput(
            "invalid_parameter", f"At most {MAX_METADATA_FILTERS} metadata.<key> filters may be given."
        )
    found: list[tuple[str, str]] = []
    for key, values in sorted(pairs.items()):
        name = _PREFIX + key
        if _METADATA_KEY.fullmatch(key) is None:
            raise InvalidInput("invalid_parameter", f"The {name[:80]} filter names an invalid metadata key.")
        if any(value != values[0] for value in values[1:]):
            raise InvalidInput(
                "invalid_parameter", f"The {name} filter is given more than once, differently."
            )
        if len(values[0]) > MAX_METADATA_VALUE_CHARS or "\x00" in values[0]:
            raise InvalidInput("invalid_parameter", f"The {name} filter is malformed.")
        found.append((key, values[0]))
    return tuple(found)
