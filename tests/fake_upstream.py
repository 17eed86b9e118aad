"""A fake OpenAI + Anthropic upstream over real HTTP on 127.0.0.1, for tests and benchmarks.

It checks the provider key the way the real APIs do, records every request it receives, and
answers in each API's shape with usage. A request body may carry a `fake` object to steer it:
    {"status": 400, "body": {...}}            answer that status and body instead
    {"fail_times": 2, "key": "k", "status": 500, "headers": {...}}
                                              fail the first 2 requests carrying key "k"
    {"latency_ms": 200}                       sleep before answering
    {"chunk_ms": 5, "pause_ms": 20000}        streamed: chunks this far apart, and a pause this
                                              long after the first chunk (a slow model thinking)
    {"words": 900}                            streamed: that many words (default: the output cap,
                                              at most 16)
    {"echo_key": true}                        a 401 whose message quotes the key it was sent
    {"echo_key": "everywhere"}                a 200 (or a stream) quoting the key in every way
                                              JSON can: text, object key, \\u-escaped, a header,
                                              and, streamed, split across chunks and in a
                                              mid-stream error event
    {"echo_key": "page"}                      a 401 HTML page spelling the key in \\u escapes
`flex[model] = Flex(...)` makes a model offer OpenAI's flex processing (`service_tier: "flex"` on
chat completions and the Responses API; any other model refuses it with a 400, as OpenAI does):
answered `latency_ms` later, with `service_tier: "flex"` in the body, counted against the same
limit; `unavailable` of them (the next ones) answered 429 "Resource Unavailable" — not a rate
limit: nothing is taken from the bucket — and counted in `unavailable`.
The `fake` object is what the test sent through the balancer: seeing it here proves the body was
passed through unchanged.

It serves OpenAI's chat completions, Responses API and embeddings, and Anthropic's messages, and
both providers' batch APIs (tests.fake_batches: `batches.tiers[model] = BatchTier(...)`).
`limits[model] = Limit(...)` makes it enforce a provider's rate limit for a model the way the
balancer models it: token buckets that refill continuously, a request reserving its prompt plus
its output cap on arrival and getting the unused output back when it completes; over the limit
it answers 429 (with OpenAI's x-ratelimit-remaining-* headers) and counts it in `rejected`. Like a
real provider it grants no grace: a request that arrives a millisecond early is refused.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from completions.providers.mock import response_object
from completions.tokens import estimate_embedding_tokens, estimate_input_tokens, requested_output_cap
from tests.fake_batches import FakeBatches

OPENAI_KEY = "sk-fake-openai-key-0123456789"


@dataclass
class Limit:
    rpm: float | None = None
    tpm: float | None = None
    burst: float = 60.0
    levels: dict[str, float] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)

    def rates(self) -> dict[str, float]:
        return {k: v / 60 for k, v in (("req", self.rpm), ("tok", self.tpm)) if v}

    def _refill(self) -> None:
        now = time.monotonic()
        for dim, rate in self.rates().items():
            cap = rate * self.burst
            self.levels[dim] = min(cap, self.levels.get(dim, rate * self.burst) + (now - self.at) * rate)
        self.at = now

    def take(self, tokens: int) -> bool:
        self._refill()
        cost = {"req": 1, "tok": tokens}
        if any(self.levels[d] < cost[d] - 1e-9 for d in self.rates()):
            return False
        for d in self.rates():
            self.levels[d] -= cost[d]
        return True

    def remaining(self) -> dict[str, str]:
        names = {"req": "requests", "tok": "tokens"}
        return {f"x-ratelimit-remaining-{names[d]}": str(int(max(0.0, v))) for d, v in self.levels.items()}

    def refund(self, tokens: int) -> None:
        self._refill()
        if "tok" in self.levels:
            self.levels["tok"] += tokens


ANTHROPIC_KEY = "sk-ant-fake-anthropic-key-0123456789"


@dataclass
class Flex:
    """A model's flex processing: each answer this much slower; the next `unavailable` flex
    requests refused for want of capacity."""

    latency_ms: int = 200
    unavailable: int = 0


class Recorded:
    def __init__(self, path: str, headers: dict[str, str], body: Any) -> None:
        self.path = path
        self.headers = headers
        self.body = body
        self.at = time.monotonic()
        self.wall = time.time()  # comparable with Redis TIME (the limiter's grant log)


class FakeUpstream:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.failures: dict[str, int] = defaultdict(int)
        self.limits: dict[str, Limit] = {}
        self.rejected: list[Recorded] = []
        self.flex: dict[str, Flex] = {}
        self.unavailable: list[Recorded] = []  # flex requests refused for want of capacity
        self.batches = FakeBatches(self)  # the batch APIs (tests.fake_batches)
        self.aborted: list[dict[str, Any]] = []  # streams the client (the balancer) broke off
        self.lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                upstream.handle(self)

            def do_GET(self) -> None:
                upstream.handle(self, "GET")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeUpstream:
        # Load the tokenizer now: loading it on the first request would stall that request's
        # handling (and its place in the limit) by a good fraction of a second.
        estimate_input_tokens({"messages": [{"role": "user", "content": "warm up"}]}, kind="openai")
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def received(self, marker: str) -> list[Recorded]:
        """Requests whose body contains `marker` anywhere (tests tag their payloads)."""
        with self.lock:
            return [r for r in self.requests if marker in json.dumps(r.body)]

    # -- request handling ------------------------------------------------------------------

    def handle(self, h: BaseHTTPRequestHandler, method: str = "POST") -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        if FakeBatches.serves(method, h.path):
            return self.batches.handle(h, method, raw, {k.lower(): v for k, v in h.headers.items()})
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return self.send(h, 400, {"error": {"message": "invalid JSON", "type": "invalid_request_error"}})
        headers = {k.lower(): v for k, v in h.headers.items()}
        record = Recorded(h.path, headers, body)
        with self.lock:
            self.requests.append(record)
        if h.path in ("/v1/chat/completions", "/v1/embeddings", "/v1/responses"):
            flavour = "openai"
            if headers.get("authorization") != f"Bearer {OPENAI_KEY}":
                return self.send(
                    h, 401, self.error(flavour, "Incorrect API key provided.", "invalid_api_key")
                )
        elif h.path == "/v1/messages":
            flavour = "anthropic"
            # Older anthropic SDKs send x-api-key, newer ones Authorization: Bearer; the API takes both.
            if ANTHROPIC_KEY not in (
                headers.get("x-api-key"),
                headers.get("authorization", "")[len("Bearer ") :],
            ):
                return self.send(h, 401, self.error(flavour, "invalid x-api-key", "authentication_error"))
        else:
            return self.send(h, 404, {"error": {"message": f"no route {h.path}", "type": "not_found"}})

        flex = None
        if body.get("service_tier") == "flex":
            flex = self.flex.get(body.get("model", ""))
            if flex is None or h.path not in ("/v1/chat/completions", "/v1/responses"):
                message = f"Flex processing is not available for model {body.get('model')!r}."
                return self.send(h, 400, self.error(flavour, message, "invalid_request_error"))
            with self.lock:
                refused = flex.unavailable > 0
                if refused:
                    flex.unavailable -= 1
                    self.unavailable.append(record)
            if refused:
                message = "Resource Unavailable: flex capacity is exhausted; try again later."
                return self.send(h, 429, self.error(flavour, message, "resource_unavailable"))
        limit = self.limits.get(body.get("model", ""))
        embeddings = h.path == "/v1/embeddings"
        prompt = (
            estimate_embedding_tokens(body.get("input"))
            if embeddings
            else estimate_input_tokens(body, kind=flavour)
        )
        cap = 0 if embeddings else requested_output_cap(body) or 1024
        if limit is not None:
            with self.lock:
                record.at = time.monotonic()  # when it counted against the limit
                record.wall = time.time()
                allowed = limit.take(prompt + cap)
                if not allowed:
                    self.rejected.append(record)
                    left = limit.remaining()
            if not allowed:
                return self.send(
                    h,
                    429,
                    self.error(flavour, "Rate limit reached", "rate_limit_exceeded"),
                    {"retry-after": "1", **left},
                )
        fake = body.get("fake") or {}
        if fake.get("latency_ms"):
            time.sleep(fake["latency_ms"] / 1000)
        if flex is not None:
            time.sleep(flex.latency_ms / 1000)
        if "fail_times" in fake:
            with self.lock:
                self.failures[fake["key"]] += 1
                failing = self.failures[fake["key"]] <= fake["fail_times"]
            if failing:
                status = fake.get("status", 500)
                return self.send(
                    h, status, self.error(flavour, "temporary failure", "server_error"), fake.get("headers")
                )
        elif "echo_key" in fake:  # an upstream that quotes the key it was sent
            sent = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
            if fake["echo_key"] == "everywhere":
                return self.send_echo(h, flavour, body, prompt, sent)
            if fake["echo_key"] == "page":  # an HTML error page, the key in \u escapes
                page = (
                    "<html><body>401: bad key " + "".join(f"\\u{ord(c):04x}" for c in sent) + "</body></html>"
                )
                return self.send_bytes(h, 401, page.encode(), "text/html")
            return self.send(
                h, 401, self.error(flavour, f"Incorrect API key provided: {sent}", "invalid_api_key")
            )
        elif "status" in fake:
            return self.send(h, fake["status"], fake.get("body") or {}, fake.get("headers"))
        if h.path == "/v1/responses":
            return self.send_response(h, body, prompt, limit, cap)
        if embeddings:
            size = int(body.get("dimensions") or 3)
            vector = ([0.5, -0.5, 0.25] * (size // 3 + 1))[:size]
            vectors = [{"object": "embedding", "index": i, "embedding": vector} for i in range(_count(body))]
            usage = {"prompt_tokens": prompt, "total_tokens": prompt}
            return self.send(
                h, 200, {"object": "list", "data": vectors, "model": body.get("model"), "usage": usage}
            )
        if body.get("stream"):
            return self.send_stream(h, flavour, body)
        answer = self.answer(flavour, body, prompt)
        if flavour == "openai":
            answer["service_tier"] = "flex" if flex is not None else "default"
        if limit is not None:
            used = answer["usage"].get("completion_tokens", answer["usage"].get("output_tokens", 0))
            with self.lock:
                limit.refund(cap - used)
        return self.send(h, 200, answer, fake.get("headers"))

    def send_response(
        self, h: BaseHTTPRequestHandler, body: dict[str, Any], prompt: int, limit: Any, cap: int
    ) -> None:
        """The Responses API, plain or streamed (its own event types), with usage; the body as
        sent is recorded like any other (previous_response_id, store… reach it unchanged)."""
        output = min(requested_output_cap(body) or 16, 16)
        if limit is not None:
            with self.lock:
                limit.refund(cap - output)
        if body.get("stream"):
            return self.send_stream(h, "openai", body, operation="responses")
        return self.send(
            h, 200, response_object(" ".join(["ok"] * output), body.get("model", ""), prompt, output)
        )

    @staticmethod
    def error(flavour: str, message: str, code: str) -> dict[str, Any]:
        if flavour == "anthropic":
            return {"type": "error", "error": {"type": code, "message": message}}
        return {"error": {"message": message, "type": code, "param": None, "code": code}}

    @staticmethod
    def answer(flavour: str, body: dict[str, Any], prompt: int) -> dict[str, Any]:
        out = min(body.get("max_tokens") or body.get("max_completion_tokens") or 16, 16)
        text = " ".join(["ok"] * out)
        if flavour == "anthropic":
            return {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": body.get("model"),
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": prompt - 2, "output_tokens": out, "cache_read_input_tokens": 2},
            }
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out},
        }

    def send_stream(
        self, h: BaseHTTPRequestHandler, flavour: str, body: dict[str, Any], operation: str = "chat"
    ) -> None:
        """Server-sent events in the API's own format, `chunk_ms` apart (default 5), the body
        closed by closing the connection. A client that breaks off is counted in `aborted`."""
        from completions.providers.base import ProviderConfig
        from completions.providers.mock import MockProvider

        chunk_ms = (body.get("fake") or {}).get("chunk_ms", 5)
        pause = (body.get("fake") or {}).get("pause_ms", 0) / 1000
        options = {
            "format": flavour,
            "latency_ms": 0,
            "chunk_ms": chunk_ms,
            # At most 16 words, unless `fake.words` asks for a longer stream.
            "output_tokens": (body.get("fake") or {}).get("words")
            or min(16, requested_output_cap(body) or 16),
        }
        config = ProviderConfig.build(
            name="fake",
            kind="mock",
            base_url="",
            api_key_env="",
            default_key_env="",
            timeout=60,
            options=options,
        )
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        stamp = bool((body.get("fake") or {}).get("stamp"))
        try:
            for number, event in enumerate(MockProvider(config).stream(body, operation)):
                if number == 1 and pause:
                    time.sleep(pause)
                if stamp and event.data.startswith("{"):
                    # When it left here (CLOCK_MONOTONIC is one clock for every process on the
                    # machine): the benchmark measures each chunk's delay to the client.
                    event = type(event)(
                        data=event.data[:-1] + f', "t_sent": {time.monotonic()}}}', event=event.event
                    )
                h.wfile.write(event.encode())
                h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            with self.lock:
                self.aborted.append(body)

    def send_echo(
        self, h: BaseHTTPRequestHandler, flavour: str, body: dict[str, Any], prompt: int, key: str
    ) -> None:
        """Quote `key` in every way an upstream might: in text, as an object key, spelled with
        \\u escapes (raw, so only a JSON parser sees it), in a header; streamed, in a chunk, split
        across chunks and in a mid-stream error event."""
        escaped = "".join(f"\\u{ord(c):04x}" for c in key)
        split = [f" and again {key[:4]}", key[4:9], key[9:], "."]  # no event holds it whole
        if body.get("stream"):
            h.send_response(200)
            h.send_header("Content-Type", "text/event-stream")
            h.send_header("x-echo", key)
            h.send_header("Connection", "close")
            h.end_headers()
            h.close_connection = True
            if flavour == "anthropic":
                start = {
                    "type": "message_start",
                    "message": {
                        "id": "msg_echo",
                        "type": "message",
                        "role": "assistant",
                        "content": [],
                        "model": body.get("model"),
                        "usage": {"input_tokens": prompt, "output_tokens": 0},
                    },
                }
                delta = {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": f"key {key}"},
                    key: 1,
                }
                error = {"type": "error", "error": {"type": "overloaded_error", "message": f"key {key}"}}
                events = [
                    ("message_start", json.dumps(start)),
                    ("content_block_delta", json.dumps(delta)[:-1] + f', "x": "{escaped}"}}'),
                    *(
                        (
                            "content_block_delta",
                            json.dumps({**delta, "delta": {"type": "text_delta", "text": t}}),
                        )
                        for t in split
                    ),
                    ("error", json.dumps(error)),
                ]
            else:
                chunk = {
                    "id": "chatcmpl-echo",
                    "object": "chat.completion.chunk",
                    "model": body.get("model"),
                    "choices": [{"index": 0, "delta": {"content": f"key {key}"}}],
                    key: 1,
                }
                error = {"error": {"message": f"key {key}", "type": "server_error"}}
                pieces = [
                    json.dumps({**chunk, "choices": [{"index": 0, "delta": {"content": t}}]}) for t in split
                ]
                events = [
                    ("", json.dumps(chunk)[:-1] + f', "x": "{escaped}"}}'),
                    *(("", p) for p in pieces),
                    ("", json.dumps(error)),
                ]
            for name, data in events:
                h.wfile.write((f"event: {name}\n" if name else "").encode() + f"data: {data}\n\n".encode())
                h.wfile.flush()
            return None
        answer = self.answer(flavour, body, prompt)
        if flavour == "anthropic":
            answer["content"][0]["text"] += f" {key}"
        else:
            answer["choices"][0]["message"]["content"] += f" {key}"
        answer[key] = {"value": key}
        data = (json.dumps(answer)[:-1] + f', "x": "{escaped}"}}').encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("x-echo", key)
        h.end_headers()
        h.wfile.write(data)
        return None

    @staticmethod
    def send(
        h: BaseHTTPRequestHandler, status: int, payload: Any, headers: dict[str, str] | None = None
    ) -> None:
        FakeUpstream.send_bytes(h, status, json.dumps(payload).encode(), "application/json", headers)

    @staticmethod
    def send_bytes(
        h: BaseHTTPRequestHandler,
        status: int,
        data: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            h.send_header(name, str(value))
        h.end_headers()
        h.wfile.write(data)


def _count(body: dict[str, Any]) -> int:
    """How many inputs an embeddings request has: one string or token array, or a list of them."""
    value = body.get("input")
    if isinstance(value, list) and value and not isinstance(value[0], int):
        return len(value)
    return 1
