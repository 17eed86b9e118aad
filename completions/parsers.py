"""The one JSON parser of the APIs: strict where a lenient parse would fail later, with a 500.

Python's json module accepts what the database cannot store and what later code cannot walk:
NaN and ±Infinity (not JSON; refused by PostgreSQL's jsonb and SQLite's JSON_VALID), numbers
that overflow to infinity (1e400), lone UTF-16 surrogates ("\\ud800": no UTF-8 encoding, so the
row could be written but never rendered) and nesting deep enough to exhaust the recursion limit
in whatever walks it next. Each is refused here, as a 400 that says what is wrong. So is a key
written twice in one object (`"model": "a", "model": "b"`): Python keeps the last, another
reader the first, and what the balancer routes by would not be what a proxy or log saw.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser

# Deeper than any real request body (message content parts, tool schemas) and far from Python's
# recursion limit, which serialisation and the admin's rendering must still have room under.
MAX_DEPTH = 64
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # rare: only then find which
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"the key {key[:40]!r} appears twice in one object")
            seen.add(key)
    return obj


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether containers nest deeper than `limit` (iteratively: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def json_loads_strict(raw: bytes | str) -> Any:
    """Parse a request body; raises ParseError with a sentence a client can act on."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise ParseError(f"The body is not valid UTF-8 (byte {exc.start}).") from None
    try:
        data = json.loads(text, parse_constant=_constant, parse_float=_float, object_pairs_hook=_object)
    except RecursionError:
        raise ParseError(f"The body is nested more than {MAX_DEPTH} levels deep.") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError, and so are ours above
        raise ParseError(f"The body is not valid JSON: {exc}.") from None
    # Cheap first: a body with few brackets cannot nest deeply.
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth_exceeds(data, MAX_DEPTH):
        raise ParseError(f"The body is nested more than {MAX_DEPTH} levels deep.")
    if _SURROGATE_ESCAPE.search(text):
        try:  # valid pairs were joined by the parser; a lone half cannot be encoded
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ParseError(
                "The body contains a lone UTF-16 surrogate (\\ud800-\\udfff): not valid Unicode."
            ) from None
    return data


class StrictJSONParser(BaseParser):
    media_type = "application/json"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        return json_loads_strict(stream.read() if stream is not None else b"")
