"""A provider that needs no network and no key: it answers in OpenAI or Anthropic shape with
realistic usage after a configurable latency, and can stream; in OpenAI format it also answers
the Responses API (plain and streamed, its own event types) and embeddings (a vector per input,
the same for the same text). `make run` demos with it, and the
benchmarks use it to measure the balancer without an upstream.

Options (provider options, overridden per model): `format` ("openai" or "anthropic"),
`latency_ms` (time to the whole answer, default 200), `output_tokens` (default: the request's
output cap, at most 64), `chunk_ms` (delay between streamed chunks, default 10).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from completions.providers.base import CompletionResult, ProviderConfig, reply_too_large
from completions.sse import Event
from completions.tokens import estimate_embedding_tokens, estimate_input_tokens, requested_output_cap

WORDS = "the balancer kept every model under its limit and served this request in order".split()


class MockProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.format = config.option("format", "openai")
        self.latency = float(config.option("latency_ms", 200)) / 1000
        self.chunk_delay = float(config.option("chunk_ms", 10)) / 1000

    def _answer(self, payload: dict[str, Any]) -> tuple[list[str], int, int]:
        cap = requested_output_cap(payload) or 64
        count = int(self.config.option("output_tokens", min(cap, 64)))
        words = [WORDS[i % len(WORDS)] for i in range(count)]
        return words, estimate_input_tokens(payload), count

    def complete(self, payload: dict[str, Any], operation: str = "chat") -> CompletionResult:
        if operation == "embeddings":
            return self._embeddings(payload)
        words, input_tokens, output_tokens = self._answer(payload)
        if operation == "responses":
            if self.latency:
                time.sleep(self.latency)
            answer = response_object(
                " ".join(words), payload.get("model", "mock"), input_tokens, output_tokens
            )
            return CompletionResult(
                body=answer, status=200, input_tokens=input_tokens, output_tokens=output_tokens
            )
        if self.latency:
            time.sleep(self.latency)
        text = " ".join(words)
        model = payload.get("model", "mock")
        if self.format == "anthropic":
            body: dict[str, Any] = {
                "id": f"msg_mock_{uuid.uuid4().hex[:24]}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
            }
        else:
            body = {
                "id": f"chatcmpl-mock{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": input_tokens,
                    "completion_tokens": output_tokens,
                    "total_tokens": input_tokens + output_tokens,
                },
            }
        return CompletionResult(body=body, status=200, input_tokens=input_tokens, output_tokens=output_tokens)

    def _embeddings(self, payload: dict[str, Any]) -> CompletionResult:
        """OpenAI's embeddings shape: one vector per input (`dimensions` long, default 8), the
        same for the same text, with the input's tokens as usage."""
        if self.latency:
            time.sleep(self.latency)
        value = payload.get("input")
        inputs = value if isinstance(value, list) and value and not isinstance(value[0], int) else [value]
        size = int(payload.get("dimensions") or 8)
        if size * len(inputs) * 3 > self.config.max_reply_bytes:  # "0.5," is the shortest a value gets
            raise reply_too_large(self.config)
        data = []
        for index, item in enumerate(inputs):
            seed = hashlib.sha256(json.dumps(item).encode()).digest()
            vector = [round(seed[i % len(seed)] / 255 * 2 - 1, 6) for i in range(size)]
            data.append({"object": "embedding", "index": index, "embedding": vector})
        tokens = estimate_embedding_tokens(value)
        body = {
            "object": "list",
            "data": data,
            "model": payload.get("model", "mock"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        text = json.dumps(body)  # the largest replies are these: held to the limit as a provider's
        if len(text) > self.config.max_reply_bytes:
            raise reply_too_large(self.config, len(text))
        return CompletionResult(body=body, status=200, input_tokens=tokens, output_tokens=0, text=text)

    def stream(self, payload: dict[str, Any], operation: str = "chat") -> Iterator[Event]:
        """Yield the server-sent events of a streamed answer in the provider's own format."""
        if operation == "responses":
            words, input_tokens, output_tokens = self._answer(payload)
            if self.latency:
                time.sleep(self.latency)
            for name, data in response_events(
                words, payload.get("model", "mock"), input_tokens, output_tokens
            ):
                time.sleep(self.chunk_delay)
                yield Event(event=name, data=json.dumps(data))
            return
        if self.format == "anthropic":
            for item in self.stream_objects(payload):
                yield Event(event=item["event"], data=json.dumps(item["data"]))
        else:
            for item in self.stream_objects(payload):
                yield Event(data=json.dumps(item))
            yield Event(data="[DONE]")

    def stream_objects(self, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The events' objects: OpenAI chunk objects (with a final usage chunk when
        stream_options.include_usage is set), or Anthropic events as {"event": name, "data": obj}.
        The first arrives after `latency_ms`, the next ones `chunk_ms` apart."""
        words, input_tokens, output_tokens = self._answer(payload)
        model = payload.get("model", "mock")
        if self.latency:
            time.sleep(self.latency)
        if self.format == "anthropic":
            yield from self._anthropic_events(words, model, input_tokens, output_tokens)
            return
        chunk_id = f"chatcmpl-mock{uuid.uuid4().hex[:24]}"

        def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
            return {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": choices,
                "usage": usage,
            }

        yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for i, word in enumerate(words):
            time.sleep(self.chunk_delay)
            text = word if i == 0 else f" {word}"
            yield chunk([{"index": 0, "delta": {"content": text}, "finish_reason": None}])
        yield chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        if (payload.get("stream_options") or {}).get("include_usage"):
            yield chunk(
                [],
                {
                    "prompt_tokens": input_tokens,
                    "completion_tokens": output_tokens,
                    "total_tokens": input_tokens + output_tokens,
                },
            )

    def _anthropic_events(
        self, words: list[str], model: str, input_tokens: int, output_tokens: int
    ) -> Iterator[dict[str, Any]]:
        message: dict[str, Any] = {
            "id": f"msg_mock_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        }
        yield {"event": "message_start", "data": {"type": "message_start", "message": message}}
        yield {
            "event": "content_block_start",
            "data": {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        }
        for i, word in enumerate(words):
            time.sleep(self.chunk_delay)
            text = word if i == 0 else f" {word}"
            yield {
                "event": "content_block_delta",
                "data": {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": text},
                },
            }
        yield {"event": "content_block_stop", "data": {"type": "content_block_stop", "index": 0}}
        yield {
            "event": "message_delta",
            "data": {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        }
        yield {"event": "message_stop", "data": {"type": "message_stop"}}


def response_object(
    text: str, model: str, input_tokens: int, output_tokens: int, *, status: str = "completed", rid: str = ""
) -> dict[str, Any]:
    """A Responses API response with one assistant message (the fake upstream answers with it too)."""
    rid = rid or f"resp_mock{uuid.uuid4().hex[:24]}"
    content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    return {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": model,
        "output": [
            {
                "type": "message",
                "id": f"msg_{rid[5:]}",
                "status": status,
                "role": "assistant",
                "content": content,
            }
        ]
        if content
        else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        if status == "completed"
        else None,
    }


def response_events(
    words: list[str], model: str, input_tokens: int, output_tokens: int
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The Responses API's streamed events of one assistant message, as (event, data)."""
    rid = f"resp_mock{uuid.uuid4().hex[:24]}"
    item_id = f"msg_{rid[5:]}"
    text = " ".join(words)
    seq = iter(range(1_000_000))

    def event(kind: str, **fields: Any) -> tuple[str, dict[str, Any]]:
        return kind, {"type": kind, "sequence_number": next(seq), **fields}

    yield event("response.created", response=response_object("", model, 0, 0, status="in_progress", rid=rid))
    item = {"type": "message", "id": item_id, "status": "in_progress", "role": "assistant", "content": []}
    yield event("response.output_item.added", output_index=0, item=item)
    part = {"type": "output_text", "text": "", "annotations": []}
    at = {"item_id": item_id, "output_index": 0, "content_index": 0}
    yield event("response.content_part.added", **at, part=part)
    for i, word in enumerate(words):
        yield event("response.output_text.delta", **at, delta=word if i == 0 else f" {word}")
    yield event("response.output_text.done", **at, text=text)
    yield event("response.content_part.done", **at, part={**part, "text": text})
    done = {**item, "status": "completed", "content": [{**part, "text": text}]}
    yield event("response.output_item.done", output_index=0, item=done)
    yield event(
        "response.completed", response=response_object(text, model, input_tokens, output_tokens, rid=rid)
    )
