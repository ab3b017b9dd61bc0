"""Log lines: one JSON object per line, for the service's loggers and gunicorn's alike.

Every line has ``timestamp`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``,
``message``, ``request_id`` (the request being served, from ``REQUEST_ID``; ``null``
outside a request) and ``pid``; ``exception`` (the formatted traceback, one string)
when the record carries one; and the fields a record was given as
``extra={"fields": {...}}`` (the request line's ``method``, ``route``, ``status``,
``duration_ms``).

The request line is written for every request, so it skips the logging module's
record and formatter chain when it can (``log_request``): one ``orjson.dumps`` of
the same dict the formatter would build, written under the handler's lock. The
timestamp's date and time are formatted once a second.
Nothing here reads headers: what a line holds is what the caller put in it (the
request line never carries the ``Authorization`` header or the query string).
"""

from __future__ import annotations

import logging
import os
import time
from contextvars import ContextVar
from typing import Any

import orjson

#: The id of the request the current thread is serving (``app.observability`` sets it
#: before the request and resets it after); ``None`` outside a request.
REQUEST_ID: ContextVar[str | None] = ContextVar("goledger_request_id", default=None)

_request_log = logging.getLogger("goledger.request")

#: (whole second, its "YYYY-MM-DDTHH:MM:SS"), replaced as one tuple: threads share it.
_second: tuple[int, str] = (0, "")


def timestamp(created: float) -> str:
    """``created`` (seconds since the epoch) as RFC 3339, UTC, milliseconds."""
    global _second
    second = int(created)
    cached_second, prefix = _second
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second = (second, prefix)
    return f"{prefix}.{int((created - second) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object (see the module docstring for its fields)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": REQUEST_ID.get(),
            "pid": record.process,
        }
        fields = record.__dict__.get("fields")
        if fields:
            entry.update(fields)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a field orjson cannot encode is written as its str(), not lost.
        return orjson.dumps(entry, default=str).decode("utf-8")


def log_request(fields: dict[str, Any]) -> None:
    """The request line (``goledger.request``, ``INFO``, message ``request``) with ``fields``.

    When every handler the line would reach is a plain ``StreamHandler`` with a
    ``JsonFormatter`` (what ``configure_logging`` installs), the line is the one the
    formatter would write, built and written here without a ``LogRecord`` (the record,
    its caller lookup and the formatter chain cost several times the line itself).
    Any other handler or filter on the way: through the logging module, as any line.
    """
    if not _request_log.isEnabledFor(logging.INFO):
        return
    handlers = _json_stream_handlers()
    if handlers is None:
        _request_log.info("request", extra={"fields": fields})
        return
    entry: dict[str, Any] = {
        "timestamp": timestamp(time.time()),
        "level": "INFO",
        "logger": "goledger.request",
        "message": "request",
        "request_id": REQUEST_ID.get(),
        "pid": os.getpid(),
    }
    entry.update(fields)
    line = orjson.dumps(entry, default=str).decode("utf-8") + "\n"
    for handler in handlers:
        handler.acquire()
        try:
            stream = handler.stream
            stream.write(line)
            stream.flush()
        except Exception:
            handler.handleError(
                _request_log.makeRecord(_request_log.name, logging.INFO, "", 0, "request", (), None)
            )
        finally:
            handler.release()


def _json_stream_handlers() -> list[logging.StreamHandler[Any]] | None:
    """The handlers an ``INFO`` line of ``goledger.request`` reaches, if all are plain JSON
    stream handlers without filters (and the logger has none); ``None`` otherwise.

    The same walk as ``Logger.callHandlers``: up the hierarchy while ``propagate`` holds,
    each handler whose level lets ``INFO`` through. No handler at all is ``None`` too
    (the logging module's last resort then decides).
    """
    if _request_log.filters:
        return None
    found: list[logging.StreamHandler[Any]] = []
    logger: logging.Logger | None = _request_log
    while logger is not None:
        for handler in logger.handlers:
            if handler.level > logging.INFO:
                continue
            if (
                type(handler) is not logging.StreamHandler
                or type(handler.formatter) is not JsonFormatter
                or handler.filters
            ):
                return None
            found.append(handler)
        logger = logger.parent if logger.propagate else None
    return found or None


def configure_logging(level: str) -> None:
    """JSON lines on stderr for every logger, the service's (``goledger.*``) at ``level``.

    The handler goes on the root logger, once, so that libraries' warnings (psycopg's
    pool, Flask) are JSON lines too; gunicorn's own loggers do not propagate there and
    get the same formatter from ``app.serving.JsonGunicornLogger``.
    """
    logging.getLogger("goledger").setLevel(level)
    root = logging.getLogger()
    if not any(isinstance(handler.formatter, JsonFormatter) for handler in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
