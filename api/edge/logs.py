"""LOG_FORMAT=json: one JSON object per line, for the app's log records and gunicorn's (its error and access logs).

Standard library and orjson only: gunicorn's master loads it (gunicorn.conf.py) before gevent patches sockets.
The request's fields (request id, key label, route, method, upstream account) are set on each record by the
app's request filter (app.py); a record outside a request carries only the common ones. Secrets are masked by
the redact filter before a record reaches this formatter, on the same handler.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

__all__ = ["REQUEST_FIELDS", "JsonFormatter", "json_line", "timestamp"]

# Record attributes copied into the line when set (the app's request filter sets them).
REQUEST_FIELDS = ("request_id", "key", "route", "method", "account")


def timestamp(seconds: float) -> str:
    """ISO 8601, UTC, milliseconds: 2026-12-07T02:01:39.123Z."""
    whole = int(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((seconds - whole) * 1000):03d}Z"


def json_line(fields: dict[str, Any]) -> str:
    """One log line: `fields` as compact JSON (values it cannot encode as their str)."""
    return orjson.dumps(fields, default=str).decode()


class JsonFormatter(logging.Formatter):
    """A record as `{"timestamp", "level", "logger", "message", <request fields>, "exception"}`."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "timestamp": timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,  # which worker
        }
        for name in REQUEST_FIELDS:
            value = getattr(record, name, None)
            if value is not None and value != "-":
                fields[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            fields["exception"] = record.exc_text
        if record.stack_info:
            fields["stack"] = record.stack_info
        return json_line(fields)
