"""Log lines that carry the id of the completion request they are about, in web and worker
processes alike, as plain text or (LOG_FORMAT=json) one JSON object per line."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("balancer_request_id", default="-")


@contextlib.contextmanager
def request_context(request_id: str) -> Iterator[None]:
    """Every log line inside is tagged with `request_id`."""
    token = request_id_var.set(request_id)
    try:
        yield
    finally:
        request_id_var.reset(token)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "process": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)
