"""Embeddings through the balancer: the official openai SDK's embeddings.create by base_url
alone, against the fake upstream and the mock provider, limited and ordered like everything
else."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def oai(web: Any, worker: Any, make_key: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{web.url}/v1", api_key=make_key("embed"), max_retries=0, timeout=60)


def test_the_sdk_embeds_strings_lists_and_token_arrays(
    oai: openai.OpenAI, fake_upstream: FakeUpstream, marker: str
) -> None:
    one = oai.embeddings.create(model="gpt-test", input=f"{marker} hello")
    assert len(one.data) == 1 and one.data[0].embedding == [0.5, -0.5, 0.25]
    assert one.usage.prompt_tokens > 0
    sent = fake_upstream.received(marker)
    assert [r.path for r in sent] == ["/v1/embeddings"] and sent[0].body["input"] == f"{marker} hello"
    several = oai.embeddings.create(model="mock-gpt", input=["first", "second", "third"], dimensions=4)
    assert [d.index for d in several.data] == [0, 1, 2] and all(len(d.embedding) == 4 for d in several.data)
    assert several.data[0].embedding != several.data[1].embedding
    tokens = oai.embeddings.create(model="mock-gpt", input=[[1, 2, 3], [4, 5]])
    assert len(tokens.data) == 2 and tokens.usage.prompt_tokens == 5


def test_embeddings_are_limited_by_their_input_tokens_without_upstream_429(
    oai: openai.OpenAI, fake_upstream: FakeUpstream, marker: str
) -> None:
    # A bucket of 100 tokens refilling 100 per second: ~30-token inputs go a few at a time.
    results = [
        oai.embeddings.create(model="embed-small", input=f"{marker} {'word ' * 25}{i}") for i in range(8)
    ]
    assert all(r.data for r in results)
    assert [r for r in fake_upstream.rejected if marker in str(r.body)] == []
    with pytest.raises(openai.BadRequestError, match=r"501 tokens \(501 input \+ 0 output.*Split the input"):
        oai.embeddings.create(model="embed-small", input="word " * 500)  # larger than its bucket


@pytest.mark.parametrize("bad", ["", [], ["ok", ""], [1, "two"], [[]], {"text": "x"}])
def test_bad_embedding_input_is_a_clear_400(oai: openai.OpenAI, bad: Any) -> None:
    with pytest.raises(openai.BadRequestError, match="input"):
        oai.embeddings.create(model="mock-gpt", input=bad)


def test_embeddings_on_the_native_api(api: httpx.Client) -> None:
    r = api.post(
        "/completions",
        json={"model": "mock-gpt", "operation": "embeddings", "payload": {"input": ["a", "b"]}, "wait": 30},
    ).json()
    assert (r["status"], r["operation"], len(r["response"]["data"])) == ("succeeded", "embeddings", 2)
    assert r["usage"]["output_tokens"] == 0
