"""Streaming through the queue.

The worker opens each attempt with a `begin` entry carrying the attempt's number, relays each
upstream server-sent event to a Redis stream of the request (`balancer:stream:<id>`) as it
arrives, tagged with that number, and every terminal state closes it with an `end` entry
(completions.services.completion_request_finish); the web process reads that stream (XREAD
BLOCK) and forwards the events to the client unchanged. The key has a TTL from its first entry,
so a stream whose worker died does not outlive it by more than STREAM_TTL_SECONDS. A re-run
(its worker was lost) never mixes with an earlier attempt: a reader that has forwarded nothing
yet follows the newest attempt; one that already forwarded part of an answer ends it with an
error event instead of splicing two answers. A client that goes
away sets `balancer:cancel:<id>`, which the worker checks between events to abort the upstream
call. `StreamAccount` follows the events to assemble the final response and its usage.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from balancer_project.redis_conn import BLOCK_SECONDS, get_async_redis, get_redis
from completions.providers.base import cached_tokens
from completions.sse import Event

STREAM_TTL_SECONDS = 3600
STREAM_MAXLEN = 100_000


def stream_key(request_id: str) -> str:
    return f"balancer:stream:{request_id}"


def cancel_key(request_id: str) -> str:
    return f"balancer:cancel:{request_id}"


# -- worker side --------------------------------------------------------------------------------


def stream_begin(request_id: str, attempt: int) -> None:
    """Open one attempt's part of the stream; the key lives STREAM_TTL_SECONDS from here."""
    key = stream_key(request_id)
    pipe = get_redis().pipeline(transaction=False)
    pipe.xadd(key, {"begin": str(attempt)}, maxlen=STREAM_MAXLEN, approximate=True)
    pipe.expire(key, STREAM_TTL_SECONDS)
    pipe.execute()


def stream_append(request_id: str, event: Event, attempt: int) -> bool:
    """Relay one event; returns True when the client asked to cancel (one round trip for both)."""
    pipe = get_redis().pipeline(transaction=False)
    pipe.xadd(
        stream_key(request_id),
        {"e": event.event, "d": event.data, "a": str(attempt)},
        maxlen=STREAM_MAXLEN,
        approximate=True,
    )
    pipe.exists(cancel_key(request_id))
    return bool(pipe.execute()[1])


def stream_end(
    request_id: str, status: str, error: dict[str, Any] | None = None, *, pipe: Any, cost: Any = None
) -> None:
    """Close a request's stream with its terminal status (readers stop there) and what it cost
    (US dollars; the answer's headers left before it was known), in `pipe`."""
    fields = {"end": status}
    if error is not None:
        fields["error"] = json.dumps(error)
    if cost is not None:
        fields["cost"] = str(cost)
    pipe.xadd(stream_key(request_id), fields, maxlen=STREAM_MAXLEN, approximate=True)
    pipe.expire(stream_key(request_id), STREAM_TTL_SECONDS)


@dataclass
class StreamAccount:
    """Follows a stream's events (OpenAI chunks, Responses API events, or Anthropic events) to
    assemble the response that is stored on the request, and its usage. flavour: "openai",
    "responses" or "anthropic"."""

    flavour: str
    text: list[str] = field(default_factory=list)
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_input_tokens: int | None = None
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
        elif self.flavour == "responses":
            self._responses(data)
        else:
            self._openai(data)

    def _responses(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "response.output_text.delta" and isinstance(data.get("delta"), str):
            self.text.append(data["delta"])
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            response = data.get("response") or {}
            usage = response.get("usage") or {}
            if isinstance(usage, dict):
                self.input_tokens = usage.get("input_tokens", self.input_tokens)
                self.output_tokens = usage.get("output_tokens", self.output_tokens)
                self.cached_input_tokens = cached_tokens(usage)
            self.stop = response.get("status") or self.stop

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
            self.cached_input_tokens = cached_tokens(usage)

    def _anthropic(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "message_start":
            usage = (data.get("message") or {}).get("usage") or {}
            self.input_tokens = sum(
                v for k, v in usage.items() if k.endswith("input_tokens") and isinstance(v, int)
            )
            self.output_tokens = usage.get("output_tokens")
            self.cached_input_tokens = cached_tokens(usage)
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
            "usage": {
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "cached_input_tokens": self.cached_input_tokens,
            },
            "events": self.events,
        }


# -- web side -----------------------------------------------------------------------------------


LOST_MID_STREAM = (
    "The worker streaming this answer was lost and the request is being run again; "
    "its result will be at /api/v1/completions/{id}."
)


KEEPALIVE: dict[str, str] = {"keepalive": "1"}


async def stream_entries(
    request_id: str, *, idle_timeout: float, keepalive: float | None = None
) -> AsyncIterator[dict[str, str]]:
    """The chunks of a request's stream, from the start, as they come, until an `end` entry.

    Only one attempt's chunks are passed on (see the module docstring). With `keepalive`, a
    `KEEPALIVE` entry comes after each `keepalive` seconds without one, so the caller can show the
    client that the line is alive. If nothing arrives for `idle_timeout` seconds (waiting in line
    included), it ends with an `end` entry of status "timeout" (the request itself goes on).
    Each XREAD blocks at most BLOCK_SECONDS, inside the client's socket timeout."""
    client = get_async_redis()
    key = stream_key(request_id)
    last = "0-0"
    attempt: str | None = None
    forwarded = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + idle_timeout
    heard = loop.time()  # when the client last got something (an entry or a keep-alive)
    while True:
        now = loop.time()
        left = deadline - now
        if left <= 0:
            message = (
                f"No event for {idle_timeout:g} s; poll /api/v1/completions/{request_id} for the result."
            )
            yield {"end": "timeout", "error": json.dumps({"message": message})}
            return
        if keepalive is not None and now - heard >= keepalive:
            heard = now
            yield KEEPALIVE
            continue
        block = min(BLOCK_SECONDS, left, keepalive - (now - heard) if keepalive is not None else left)
        found: list[tuple[str, list[tuple[str, dict[str, str]]]]] | None = await client.xread(  # type: ignore[assignment]
            {key: last}, block=max(1, int(block * 1000)), count=500
        )  # RESP2, decoded: [(stream, [(entry id, fields)])]
        for _, entries in found or []:
            for entry_id, fields in entries:
                last = entry_id
                deadline = loop.time() + idle_timeout
                if "end" in fields:
                    yield fields
                    return
                if "begin" in fields:
                    if forwarded and fields["begin"] != attempt:
                        message = LOST_MID_STREAM.format(id=request_id)
                        yield {"end": "failed", "error": json.dumps({"message": message})}
                        return
                    attempt = fields["begin"]
                    continue
                if attempt is not None and fields.get("a", attempt) != attempt:
                    continue  # an earlier attempt's chunk
                forwarded = True
                heard = loop.time()
                yield fields


async def cancel_request_async(request_id: str) -> None:
    await get_async_redis().set(cancel_key(request_id), "1", ex=STREAM_TTL_SECONDS)
