"""Server-sent events, as the OpenAI and Anthropic APIs use them: parsing an upstream byte stream
into events, and writing events back out unchanged."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    data: str
    event: str = ""

    def encode(self) -> bytes:
        head = f"event: {self.event}\n" if self.event else ""
        body = "".join(f"data: {line}\n" for line in self.data.split("\n"))
        return f"{head}{body}\n".encode()


def parse(lines: Iterable[str]) -> Iterator[Event]:
    """Events from the lines of an SSE stream (comments and ids are dropped)."""
    event, data = "", list[str]()
    for raw in lines:
        line = raw.rstrip("\r")
        if not line:
            if data:
                yield Event(data="\n".join(data), event=event)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    if data:
        yield Event(data="\n".join(data), event=event)
