"""Log lines that carry the id of the completion request they are about, in web and worker
processes alike, as plain text or (LOG_FORMAT=json) one JSON object per line.

No text logged can begin a record of its own: upstream error bodies, prompts they reflect and
names end up in messages. A plain record is one line whose control characters are escaped
(`\\n`, `\\x1b`...); its traceback, if any, follows with every line indented. So a line at
column 0 always starts a record, and one starting with a space never does."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator
from typing import Any

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


# Characters that end a line or move the cursor in a terminal or log viewer: the C0 controls but
# the tab, DEL, the C1 controls (NEL among them) and Unicode's line and paragraph separators.
_CONTROLS = [*range(0x00, 0x09), *range(0x0A, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
_ESCAPES = {c: chr(c).encode("unicode_escape").decode("ascii") for c in _CONTROLS}


def one_line(text: str) -> str:
    """`text` with every character that could end its line or rewrite a terminal escaped."""
    return text.translate(_ESCAPES)


class PlainFormatter(logging.Formatter):
    """The plain format: one line per message, tracebacks indented under it."""

    INDENT = "    "

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = one_line(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802
        return self._indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return self._indented(super().formatStack(stack_info))

    def _indented(self, text: str) -> str:
        return "\n".join(self.INDENT + one_line(line) for line in text.split("\n"))


class ClientErrorsAtInfo(logging.Filter):
    """On `django.request`: a client's error (4xx) is INFO, not WARNING — the client is told, and
    an operator's log is not the place for every wrong key or unknown model; so is the 503 the
    probes get while the service starts (`/ready`). Server errors stay ERROR."""

    QUIET_503_PATHS = ("/ready", "/health")

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if isinstance(status, int):
            path = getattr(getattr(record, "request", None), "path", "")
            if status < 500 or (status == 503 and path in self.QUIET_503_PATHS):
                record.levelno, record.levelname = logging.INFO, "INFO"
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
