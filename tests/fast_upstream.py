"""A lean fake OpenAI upstream for benchmarks: `python -m tests.fast_upstream PORT LATENCY_MS`.

The test suite's FakeUpstream (tests/fake_upstream.py) runs a thread per connection inside the
benchmark process and checks limits; at hundreds of requests per second it would eat the CPU the
balancer is being measured on. This one is a separate process, one asyncio loop (uvloop when
installed), keep-alive HTTP/1.1: it answers `POST /v1/chat/completions` in OpenAI's shape with
usage, after LATENCY_MS (or the body's `fake.latency_ms`), and 401 without the bench key.
`GET /stats` answers what it saw: requests, calls in flight now and at most, and every request's
arrival time (CLOCK_MONOTONIC, one clock for all processes) and model. A body with
`fake.hold: true` is held, however long, until `GET /release`.
It prints "ready" once it listens.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from tests.fake_upstream import OPENAI_KEY

AUTH = f"authorization: bearer {OPENAI_KEY}".encode().lower()


def answer(body: dict) -> bytes:
    out = min(body.get("max_tokens") or body.get("max_completion_tokens") or 16, 16)
    prompt = 8 * len(body.get("messages") or ())
    return json.dumps(
        {
            "id": "chatcmpl-fast",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(["ok"] * out)},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out},
        }
    ).encode()


def response(status: str, data: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
    ).encode()
    return head + data


class Stats:
    held: list[tuple[asyncio.Protocol, bytes]] = []
    in_flight = 0
    max_in_flight = 0
    arrivals: list[tuple[float, str]] = []


class Upstream(asyncio.Protocol):
    latency: float = 0.02

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line[15:])
            if len(self.buffer) < end + 4 + length:
                return
            raw = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.handle(head, raw)

    def handle(self, head: bytes, raw: bytes) -> None:
        if head.startswith(b"get /stats"):
            stats = {
                "requests": len(Stats.arrivals),
                "in_flight": Stats.in_flight,
                "max_in_flight": Stats.max_in_flight,
                "arrivals": Stats.arrivals,
            }
            self.transport.write(response("200 OK", json.dumps(stats).encode()))
            return
        if head.startswith(b"get /release"):
            held, Stats.held = Stats.held, []
            for protocol, data in held:
                protocol._send(data)  # type: ignore[attr-defined]
            self.transport.write(response("200 OK", json.dumps({"released": len(held)}).encode()))
            return
        if AUTH not in head:
            self.transport.write(response("401 Unauthorized", b'{"error": {"message": "bad key"}}'))
            return
        body = json.loads(raw)
        Stats.arrivals.append((time.monotonic(), str(body.get("model"))))
        Stats.in_flight += 1
        Stats.max_in_flight = max(Stats.max_in_flight, Stats.in_flight)
        fake = body.get("fake") or {}
        data = response("200 OK", answer(body))
        if fake.get("hold"):
            Stats.held.append((self, data))
            return
        delay = fake.get("latency_ms", self.latency * 1000) / 1000
        asyncio.get_running_loop().call_later(delay, self._send, data)

    def _send(self, data: bytes) -> None:
        Stats.in_flight -= 1
        if not self.transport.is_closing():
            self.transport.write(data)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Upstream, "127.0.0.1", port, backlog=4096)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    port, latency_ms = int(sys.argv[1]), float(sys.argv[2])
    Upstream.latency = latency_ms / 1000
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(port))


if __name__ == "__main__":
    main()
