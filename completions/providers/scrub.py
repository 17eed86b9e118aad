"""Provider keys out of everything an upstream says: the one place upstream output is cleaned
before the balancer stores it, relays it or puts it in a stream.

Some upstreams quote the key they were sent — in an error message, but also in a 200 body, as
a JSON object key, in a header or in a mid-stream error event. Every byte of upstream output
the providers hand on passes through a `Scrubber` first: raw text (bodies as the upstream
encoded them, SSE lines, error texts) by `text`, parsed JSON (keys and values) and headers by
`value`. JSON may spell the key with escapes (`\\/`, `\\u0073k-…`) that a text replacement does
not see; `json_text` parses such a body and re-encodes it when the parsed form still held the
key, so what is relayed never does.

A stream may also split the key across events ("sk-ab" in one delta, "cdef…" in the next): no
line holds it, but the client's text and the stored one would. `events` holds back the events
whose text could be the start of the key until the text that follows says it is not, and
rewrites the text of the events that together spell it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from completions.sse import Event

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

    def decoded_text(self, text: str) -> str:
        """Text that is not JSON (an error page, a plain message) as `text` does, and if it spells
        the key with escapes (`\\u0073k-…`, `\\x73`, `%73`), with its escapes decoded first: a
        reader who decodes them must not find the key."""
        text = self.text(text)
        if self.secret and ("\\" in text or "%" in text):
            decoded = _ESCAPE.sub(_unescape, text)
            if self.secret in decoded:
                return self.text(decoded)
        return text

    def events(self, events: Iterable[Event]) -> Iterator[Event]:
        """The events of a stream, with the key spelled across several of them replaced (see the
        module's docstring). If the upstream breaks off, what was held is sent before the error."""
        if not self.secret:
            yield from events
            return
        held = _Holdback(self.secret)
        try:
            for event in events:
                yield from held.push(event)
        except Exception:
            yield from held.flush()
            raise
        yield from held.flush()

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


_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})|\\x([0-9a-fA-F]{2})|%([0-9a-fA-F]{2})|\\(/)")


def _unescape(match: re.Match[str]) -> str:
    code = next(g for g in match.groups() if g is not None)
    return code if code == "/" else chr(int(code, 16))


def _text_slots(data: Any) -> list[tuple[dict[str, Any], str]]:
    """Where an event's generated text is, as (object, field) pairs: OpenAI's chat chunks
    (choices[].delta.content), the Responses API's output_text deltas, Anthropic's text deltas."""
    if not isinstance(data, dict):
        return []
    slots: list[tuple[dict[str, Any], str]] = []
    for choice in data.get("choices") or []:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            slots.append((delta, "content"))
    if data.get("type") == "response.output_text.delta" and isinstance(data.get("delta"), str):
        slots.append((data, "delta"))
    delta = data.get("delta")
    if (
        data.get("type") == "content_block_delta"
        and isinstance(delta, dict)
        and isinstance(delta.get("text"), str)
    ):
        slots.append((delta, "text"))
    return slots


@dataclass
class _Held:
    event: Event
    data: Any = None  # parsed, when it has text
    text: str = ""


@dataclass
class _Holdback:
    """Events held while the text at their end could be the beginning of the key."""

    secret: str
    held: list[_Held] = field(default_factory=list)

    def push(self, event: Event) -> Iterator[Event]:
        item = _Held(event)
        if event.data != "[DONE]":
            try:
                data = json.loads(event.data)
            except ValueError:
                data = None
            slots = _text_slots(data)
            if slots:
                item.data, item.text = data, "".join(obj[key] for obj, key in slots)
        if not item.text and not self.held:
            yield event
            return
        self.held.append(item)
        self._redact()
        yield from self._release()

    def flush(self) -> Iterator[Event]:
        held, self.held = self.held, []
        for item in held:
            yield item.event

    def _redact(self) -> None:
        """Replace every whole key in the held text, keeping each character in its event: the
        marker goes where the key began, the key's characters leave the events they were in."""
        window = "".join(item.text for item in self.held)
        if self.secret not in window:
            return
        starts = {m.start() for m in re.finditer(re.escape(self.secret), window)}
        removed: set[int] = set()
        for start in starts:
            removed.update(range(start, start + len(self.secret)))
        at = 0
        for item in self.held:
            kept = []
            for i in range(at, at + len(item.text)):
                if i in starts:
                    kept.append(REDACTED)
                if i not in removed:
                    kept.append(window[i])
            at += len(item.text)
            if "".join(kept) != item.text:
                item.text = "".join(kept)
                slots = _text_slots(item.data)
                for n, (obj, key) in enumerate(slots):
                    obj[key] = item.text if n == 0 else ""
                item.event = Event(data=json.dumps(item.data), event=item.event.event)

    def _release(self) -> Iterator[Event]:
        """Send the held events whose text ends before the longest end of the held text that
        begins the key (all of them when none does), in order."""
        window = "".join(item.text for item in self.held)
        longest = min(len(window), len(self.secret) - 1)
        keep = next((n for n in range(longest, 0, -1) if self.secret.startswith(window[-n:])), 0)
        sendable = len(window) - keep
        while self.held and len(self.held[0].text) <= sendable:
            sendable -= len(self.held[0].text)
            yield self.held.pop(0).event
