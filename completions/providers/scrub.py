"""Provider keys out of everything an upstream says: the one place upstream output is cleaned
before the balancer stores it, relays it or puts it in a stream.

Some upstreams quote the key they were sent — in an error message, but also in a 200 body, as
a JSON object key, in a header or in a mid-stream error event. Every byte of upstream output
the providers hand on passes through a `Scrubber` first: raw text (bodies as the upstream
encoded them, SSE lines, error texts) by `text`, parsed JSON (keys and values) and headers by
`value`. JSON may spell the key with escapes (`\\/`, `\\u0073k-…`) that a text replacement does
not see; `json_text` parses such a body and re-encodes it when the parsed form still held the
key, so what is relayed never does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

REDACTED = "[redacted]"


@dataclass(frozen=True)
class Scrubber:
    secret: str | None

    def text(self, text: str) -> str:
        """`text` with the key, and its spelling with escaped slashes, replaced."""
        secret = self.secret
        if not secret:
            return text
        text = text.replace(secret, REDACTED)
        if "/" in secret:
            text = text.replace(secret.replace("/", "\\/"), REDACTED)
        return text

    def value(self, value: Any) -> Any:
        """A parsed JSON value (or headers) with the key replaced in every string, keys included."""
        if not self.secret:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value

    def json_text(self, text: str) -> tuple[Any, str | None]:
        """A JSON body, cleaned: (its parsed value, the text to relay). The text is None when the
        key was hidden behind escapes and the value must be encoded again instead. Raises
        ValueError when `text` is not JSON."""
        clean = self.text(text)
        parsed = json.loads(clean)
        if self.secret and "\\u" in clean:  # the only spelling text() cannot see
            scrubbed = self.value(parsed)
            if scrubbed != parsed:
                return scrubbed, None
        return parsed, clean

    def lines(self, lines: Iterable[str]) -> Iterator[str]:
        """Lines of an event stream, each cleaned; a data line hiding the key behind escapes is
        encoded again."""
        for line in lines:
            clean = self.text(line)
            if self.secret and "\\u" in clean and clean.startswith("data:"):
                try:
                    parsed, relayed = self.json_text(clean[5:].lstrip(" "))
                except ValueError:
                    pass
                else:
                    if relayed is None:
                        clean = "data: " + json.dumps(parsed)
            yield clean
