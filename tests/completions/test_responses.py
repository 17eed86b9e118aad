"""The Responses API through the balancer: the official openai SDK's responses.create and
responses.stream by base_url alone, against the fake upstream and the mock provider."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def key(web: Any, worker: Any, make_key: Any) -> str:
    return str(make_key("responses"))


@pytest.fixture
def oai(web: Any, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{web.url}/v1", api_key=key, max_retries=0, timeout=60)


def test_the_sdk_creates_a_response_and_the_body_reaches_the_provider_unchanged(
    web: Any, oai: openai.OpenAI, key: str, fake_upstream: FakeUpstream, marker: str
) -> None:
    raw = oai.responses.with_raw_response.create(
        model="gpt-test",
        instructions="Answer briefly.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": marker}]}],
        max_output_tokens=6,
        previous_response_id="resp_earlier",
        store=False,
    )
    response = raw.parse()
    assert response.output_text == "ok ok ok ok ok ok"
    assert response.usage is not None and response.usage.output_tokens == 6
    sent = fake_upstream.received(marker)
    assert [r.path for r in sent] == ["/v1/responses"]
    assert (sent[0].body["previous_response_id"], sent[0].body["store"]) == ("resp_earlier", False)
    # Queued, limited and settled like a chat completion: the record says what it cost.
    with httpx.Client(base_url=f"{web.url}/api/v1", headers={"Authorization": f"Bearer {key}"}) as c:
        record = c.get(f"/completions/{raw.headers['x-request-id']}").json()
    assert (record["status"], record["operation"]) == ("succeeded", "responses")
    assert record["usage"]["output_tokens"] == 6 and record["usage"]["estimated_output_tokens"] == 6


def test_the_sdk_streams_a_response_with_its_own_event_types(oai: openai.OpenAI, marker: str) -> None:
    with oai.responses.stream(model="gpt-test", input=f"{marker} stream", max_output_tokens=5) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 5
    assert final.output_text and final.usage is not None and final.usage.output_tokens == 5
    events = list(
        oai.responses.create(model="mock-gpt", input=f"{marker} mock", max_output_tokens=4, stream=True)
    )
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == final_text_of(events)


def final_text_of(events: list[Any]) -> str:
    done = [e for e in events if e.type == "response.completed"]
    assert len(done) == 1
    return str(done[0].response.output_text)


def test_a_mock_model_answers_the_responses_api_offline(oai: openai.OpenAI) -> None:
    response = oai.responses.create(model="mock-gpt", input="hello", max_output_tokens=3)
    assert response.output_text == "the balancer kept"
    assert response.usage is not None and response.usage.input_tokens > 0
