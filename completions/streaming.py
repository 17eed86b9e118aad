"""Streaming through the queue.

The worker relays each upstream server-sent event to a Redis stream of the request
(`balancer:stream:<id>`) as it arrives and closes it with an `end` entry; the web process reads
that stream (XREAD BLOCK) and forwards the events to the client unchanged. A client that goes
away sets `balancer:cancel:<id>`, which the worker checks between events to abort the upstream
call. `StreamAccount` follows the events to assemble the final response and its usage.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from balancer_project.redis_conn import get_async_redis, get_redis
from completions.sse import Event

STREAM_TTL_SECONDS = 3600
STREAM_MAXLEN = 100_000


def stream_key(request_id: str) -> str:
    return f"balancer:stream:{request_id}"


def cancel_key(request_id: str) -> str:
    return f"balancer:cancel:{request_id}"


# -- worker side --------------------------------------------------------------------------------


def stream_append(request_id: str, event: Event) -> bool:
    """Relay one event; returns True when the client asked to cancel (one round trip for both)."""
    pipe = get_redis().pipeline(transaction=False)
    pipe.xadd(
        stream_key(request_id), {"e": event.event, "d": event.data}, maxlen=STREAM_MAXLEN, approximate=True
    )
    pipe.exists(cancel_key(request_id))
    return bool(pipe.execute()[1])


def stream_end(request_id: str, status: str, error: dict[str, Any] | None = None) -> None:
    """Close a request's stream with its terminal status (readers stop there)."""
    fields = {"end": status}
    if error is not None:
        fields["error"] = json.dumps(error)
    pipe = get_redis().pipeline(transaction=False)
    pipe.xadd(stream_key(request_id), fields, maxlen=STREAM_MAXLEN, approximate=True)
    pipe.expire(stream_key(request_id), STREAM_TTL_SECONDS)
    pipe.execute()


@dataclass
class StreamAccount:
    """Follows a stream's events (OpenAI chunks or Anthropic events) to assemble the response
    that is stored on the request, and its usage."""

    flavour: str
    text: list[str] = field(default_factory=list)
    input_tokens: int | None = None
    output_tokens: int | None = None
    stop: str | None = None
    events: int = 0

    def feed(self, event: Event) -> None:
        self.events += 1
        if event.data == "[DONE]":
            return
        try:
            data = json.loads(event.data)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        if self.flavour == "anthropic":
            self._anthropic(data)
        else:
            self._openai(data)

    def _openai(self, chunk: dict[str, Any]) -> None:
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                self.text.append(delta["content"])
            if choice.get("finish_reason"):
                self.stop = choice["finish_reason"]
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.input_tokens = usage.get("prompt_tokens", self.input_tokens)
            self.output_tokens = usage.get("completion_tokens", self.output_tokens)

    def _anthropic(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "message_start":
            usage = (data.get("message") or {}).get("usage") or {}
            self.input_tokens = sum(
                v for k, v in usage.items() if k.endswith("input_tokens") and isinstance(v, int)
            )
            self.output_tokens = usage.get("output_tokens")
        elif kind == "content_block_delta":
            delta = data.get("delta") or {}
            if isinstance(delta.get("text"), str):
                self.text.append(delta["text"])
        elif kind == "message_delta":
            usage = data.get("usage") or {}
            if isinstance(usage.get("output_tokens"), int):
                self.output_tokens = usage["output_tokens"]  # cumulative
            self.stop = (data.get("delta") or {}).get("stop_reason") or self.stop

    def response(self) -> dict[str, Any]:
        """What the request history keeps of a streamed answer."""
        return {
            "streamed": True,
            "text": "".join(self.text),
            "stop": self.stop,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens},
            "events": self.events,
        }


# -- web side -----------------------------------------------------------------------------------


async def stream_entries(request_id: str, block_ms: int = 15_000) -> AsyncIterator[dict[str, str]]:
    """The entries of a request's stream from the start, as they come, until its `end` entry."""
    client = get_async_redis()
    key = stream_key(request_id)
    last = "0-0"
    while True:
        found = await client.xread({key: last}, block=block_ms, count=500)
        for _, entries in found or []:
            for entry_id, fields in entries:
                last = entry_id
                yield fields
                if "end" in fields:
                    return


async def cancel_request_async(request_id: str) -> None:
    await get_async_redis().set(cancel_key(request_id), "1", ex=STREAM_TTL_SECONDS)
