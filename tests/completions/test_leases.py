"""Liveness is a lease the living renew, with the live web and worker processes: a stream far
longer than its provider's timeout and the lease is called upstream once and reaches its client
whole; a worker SIGKILLed mid-stream has its request run again once its lease ends, without
anyone calling the sweeper."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import httpx
import openai
import pytest
from django.conf import settings

from tests.conftest import _worker_alive
from tests.fake_upstream import FakeUpstream
from tests.live import wait_until

pytestmark = pytest.mark.timeout(180)

WORDS = "the balancer kept every model under its limit and served this request in order".split()


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_a_stream_longer_than_its_provider_timeout_and_its_lease_runs_once_and_arrives_whole(
    web: Any, worker: Any, make_key: Any, fake_upstream: FakeUpstream, marker: str
) -> None:
    # gpt-brief's provider times a read out after 2 s; its chunks come 1 s apart for 12 s: three
    # leases, six times the provider's timeout, longer than the Redis client's socket timeout.
    key = make_key("long-call")
    oai = openai.OpenAI(base_url=f"{web.url}/v1", api_key=key, max_retries=0, timeout=120)
    started = time.monotonic()
    chunks = list(
        oai.chat.completions.create(
            model="gpt-brief",
            messages=user(marker),
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"fake": {"chunk_ms": 1000}},
        )
    )
    assert time.monotonic() - started > 3 * settings.BALANCER_LEASE_SECONDS
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(WORDS[:12])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    assert len(fake_upstream.received(marker)) == 1
    with httpx.Client(base_url=f"{web.url}/api/v1", headers={"Authorization": f"Bearer {key}"}) as own:
        record = own.get("/completions", params={"limit": 1}).json()["results"][0]
        assert (record["status"], record["attempts"]) == ("succeeded", 1)
        assert own.get("/queues/brief/gpt-brief").json()["in_flight"] == 0


def test_a_worker_killed_mid_stream_has_its_request_run_again_when_its_lease_ends(
    web: Any, worker: Any, start_worker: Any, make_key: Any, fake_upstream: FakeUpstream, marker: str
) -> None:
    key = make_key("killed")
    headers = {"Authorization": f"Bearer {key}"}
    body = {
        "model": "gpt-brief",
        "messages": user(marker),
        "max_tokens": 12,
        "stream": True,
        # 12 s in all: long enough to still be running once a second worker has started.
        "fake": {"chunk_ms": 1000},
    }
    seen: list[str] = []

    def read() -> None:
        with httpx.stream(
            "POST", f"{web.url}/v1/chat/completions", json=body, headers=headers, timeout=60
        ) as r:
            seen.extend(r.iter_lines())

    reader = threading.Thread(target=read)
    reader.start()
    own = httpx.Client(base_url=f"{web.url}/api/v1", headers=headers, timeout=30)
    wait_until(lambda: any(line.startswith("data: ") for line in seen), 30, "the first chunk")
    time.sleep(settings.BALANCER_LEASE_SECONDS / 2)  # its lease has been renewed by now
    rid = own.get("/completions", params={"limit": 1}).json()["results"][0]["id"]
    start_worker()  # a live worker, for beat's tend and for the re-run, started after the call
    running = own.get(f"/completions/{rid}").json()
    assert (running["status"], running["attempts"]) == ("running", 1), "the call ended before the kill"
    worker.stop(sig=signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        # Nobody runs the sweeper: the tend (beat) finds the lease ended and puts it back.
        wait_until(
            lambda: own.get(f"/completions/{rid}").json()["attempts"] == 2,
            6 * settings.BALANCER_LEASE_SECONDS,
            "the request to be run again, away from its dead worker",
            interval=0.2,
        )
        # Within seconds of its lease's end (the old sweeper waited for the provider's timeout
        # plus a margin, then for its own next run, every 30 s).
        assert time.monotonic() - killed_at < 4 * settings.BALANCER_LEASE_SECONDS
    finally:
        worker.start(ready=_worker_alive)
    done = own.get(f"/completions/{rid}", params={"wait": 60}).json()
    reader.join(30)
    assert (done["status"], done["attempts"]) == ("succeeded", 2)
    assert done["response"]["text"] == " ".join(WORDS[:12])
    # The client had part of the first answer: it is told the request runs again, not given a splice.
    events = [json.loads(line[6:]) for line in seen if line.startswith("data: {")]
    assert "run again" in events[-1]["error"]["message"]
    assert len(fake_upstream.received(marker)) == 2  # the killed call, and the one that finished
    wait_until(lambda: own.get("/queues/brief/gpt-brief").json()["in_flight"] == 0, 10, "the slot back")
