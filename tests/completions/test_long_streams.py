"""Streams that live longer than the balancer's own timeouts: a wait in line of 30 s and an
upstream that pauses 20 s mid-stream, through the live web and worker processes, with the
official SDK and a raw HTTP client that sees the keep-alive comments."""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.live import wait_until

pytestmark = pytest.mark.timeout(180)

# What the fake upstream streams for max_tokens=8 (the mock's words).
EIGHT_WORDS = "the balancer kept every model under its limit"


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_streams_wait_in_line_and_pause_longer_than_any_socket_timeout(
    web: Any, worker: Any, make_key: Any, fake_upstream: FakeUpstream, marker: str
) -> None:
    key = make_key("long-streams")
    oai = openai.OpenAI(base_url=f"{web.url}/v1", api_key=key, max_retries=0, timeout=120)
    first: dict[str, Any] = {}

    def stream_with_a_pause() -> None:
        # gpt-patient grants one request, then one per 30 s: this one goes at once, and its
        # upstream pauses 20 s after the first chunk.
        try:
            chunks = list(
                oai.chat.completions.create(
                    model="gpt-patient",
                    messages=user(f"{marker} pausing"),
                    max_tokens=8,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_body={"fake": {"pause_ms": 20_000}},
                )
            )
            first["text"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            first["usage"] = chunks[-1].usage
        except Exception as exc:  # reported below, on the test's thread
            first["error"] = exc

    thread = threading.Thread(target=stream_with_a_pause)
    thread.start()
    wait_until(lambda: bool(fake_upstream.received(f"{marker} pausing")), 30, "the first stream upstream")

    # The second waits its turn (~30 s) with nothing to say: comment lines keep the connection
    # busy for proxies that cut idle ones; then it streams like any other.
    started = time.monotonic()
    lines: list[tuple[float, str]] = []
    body = {
        "model": "gpt-patient",
        "messages": user(f"{marker} waiting"),
        "max_tokens": 8,
        "stream": True,
    }
    with httpx.stream(
        "POST",
        f"{web.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            lines.append((time.monotonic(), line))
    thread.join(timeout=120)

    assert "error" not in first, first.get("error")
    assert first["text"] == EIGHT_WORDS
    assert first["usage"] is not None and first["usage"].completion_tokens == 8

    data = [line[len("data: ") :] for _, line in lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    text = "".join(
        (json.loads(d)["choices"] or [{}])[0].get("delta", {}).get("content") or "" for d in data[:-1]
    )
    assert text == EIGHT_WORDS
    first_data_at = next(at for at, line in lines if line.startswith("data: "))
    assert first_data_at - started > 20, "the second stream should have waited its turn"
    comments = [at for at, line in lines if line.startswith(":") and at < first_data_at]
    assert comments, "no keep-alive comment while the stream waited in line"
    # Each tells the client its place: next in line, and when it may start.
    said = [line for at, line in lines if line.startswith(": queued") and at < first_data_at]
    assert said and all(
        re.match(r": queued position=0 estimated_wait=[\d.]+s estimated_start=\S+Z$", s) for s in said
    ), said
    heard = [started, *comments, first_data_at]
    assert max(b - a for a, b in zip(heard, heard[1:], strict=False)) <= 16

    # Each was called upstream once: nobody retried a stream that broke.
    assert len(fake_upstream.received(f"{marker} pausing")) == 1
    assert len(fake_upstream.received(f"{marker} waiting")) == 1
