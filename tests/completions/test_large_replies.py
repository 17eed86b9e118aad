"""Large replies: one below BALANCER_MAX_REPLY_BYTES (4 MiB in the tests) reaches its client whole,
through the row rather than pub/sub, so no web process's subscription is put at risk; one above
it fails its request with 502 `reply_too_large` and leaves a small row. Against the fake upstream
(the SDK path, read as a stream and stopped at the limit) and the mock provider alike."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from balancer_project.redis_conn import get_redis
from completions.events import REPLY_INLINE_BYTES, REPLY_PREFIX

pytestmark = pytest.mark.timeout(120)

MODELS = ["gpt-test", "mock-gpt"]  # the fake upstream over HTTP; the in-process mock


@pytest.fixture
def published() -> Iterator[list[int]]:
    """The size of every message published on a reply channel while the test runs."""
    pubsub = get_redis().pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(f"{REPLY_PREFIX}*")
    sizes: list[int] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message is not None:
                sizes.append(len(message["data"]))

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    yield sizes
    stop.set()
    thread.join(5)
    pubsub.close()


@pytest.fixture
def oai(web: Any, worker: Any, make_key: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{web.url}/v1", api_key=make_key("large"), max_retries=0, timeout=60)


@pytest.mark.parametrize("model", MODELS)
def test_a_large_reply_reaches_its_client_whole_and_never_through_pub_sub(
    oai: openai.OpenAI, published: list[int], model: str
) -> None:
    oai.embeddings.create(model=model, input="warm-up", dimensions=4)  # the web's listener subscribes
    small = oai.embeddings.create(model=model, input="small", dimensions=4)
    large = oai.embeddings.create(model=model, input=["one", "two"], dimensions=100_000)  # ~1.5 MB
    assert len(small.data[0].embedding) == 4
    assert [len(d.embedding) for d in large.data] == [100_000, 100_000]
    # The small one was published; the 1.5-MB one was not (it was read from its row).
    assert published and max(published) <= REPLY_INLINE_BYTES + 1024 < 1_500_000


@pytest.mark.parametrize("model", MODELS)
def test_a_reply_over_the_limit_fails_clearly_and_keeps_its_row_small(
    oai: openai.OpenAI, api: httpx.Client, web: Any, published: list[int], model: str
) -> None:
    with pytest.raises(openai.APIStatusError) as raised:
        oai.embeddings.create(model=model, input=["a", "b", "c"], dimensions=400_000)  # ~6 MB
    assert raised.value.status_code == 502
    assert "BALANCER_MAX_REPLY_BYTES" in raised.value.message
    answer = api.post(
        "/completions",
        json={
            "model": model,
            "operation": "embeddings",
            "payload": {"input": ["a", "b", "c"], "dimensions": 400_000},
            "wait": 30,
        },
    )
    row = answer.json()
    assert row["status"] == "failed" and row["response"] is None
    assert "BALANCER_MAX_REPLY_BYTES" in row["error"]["message"]
    assert len(api.get(row["links"]["self"]).content) < 4096  # what is stored of it is small
    assert all(size < 4096 for size in published)
    # The web process that served them still answers everyone else at once.
    assert oai.embeddings.create(model=model, input="after", dimensions=4).data
