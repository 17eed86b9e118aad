"""The plain log format: one line per message, whatever the message holds; tracebacks indented."""

from __future__ import annotations

import logging
import re

from balancer_project.logs import PlainFormatter

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) balancer\.test ")


def _format(record: logging.LogRecord) -> list[str]:
    return PlainFormatter(FORMAT).format(record).split("\n")


def _record(msg: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("balancer.test", logging.ERROR, __file__, 1, msg, args, exc_info)  # type: ignore[arg-type]


def test_a_message_with_line_breaks_and_terminal_controls_stays_one_line_with_them_escaped() -> None:
    forged = "2020-01-01 00:00:00,000 CRITICAL root forged"
    lines = _format(_record("upstream said: %s", f"a\n{forged}\r\n\x1b[2K\u2028\x85{forged}\ttab"))
    assert len(lines) == 1 and RECORD_START.match(lines[0])
    assert lines[0].endswith(r"a\n" + forged + r"\r\n\x1b[2K\u2028\x85" + forged + "\ttab")


def test_a_traceback_follows_its_record_indented_even_where_its_message_holds_a_forged_record() -> None:
    try:
        raise ValueError("bad\n2020-01-01 00:00:00,000 CRITICAL root forged")
    except ValueError as exc:
        lines = _format(_record("failed", exc_info=(type(exc), exc, exc.__traceback__)))
    assert RECORD_START.match(lines[0]) and len(lines) > 3
    assert all(line.startswith("    ") for line in lines[1:])
    assert lines[1] == "    Traceback (most recent call last):"
    assert lines[-1] == "    2020-01-01 00:00:00,000 CRITICAL root forged"
