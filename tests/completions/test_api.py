"""The /api/v1/completions API end to end: HTTP → web process → Celery queue → worker process →
provider (official SDK → fake upstream over HTTP, or the mock) → result back to the client."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fake_upstream import ANTHROPIC_KEY, OPENAI_KEY, FakeUpstream

pytestmark = pytest.mark.timeout(120)


def submit(
    api: httpx.Client, provider: str, model: str, payload: dict[str, Any], **extra: Any
) -> httpx.Response:
    return api.post("/completions", json={"provider": provider, "model": model, "payload": payload, **extra})


def chat(marker: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"hello {marker}"}], **extra}


def test_openai_request_goes_through_the_sdk_to_the_upstream_and_back(
    api: httpx.Client, fake_upstream: FakeUpstream, marker: str
) -> None:
    r = submit(api, "openai", "gpt-test", chat(marker, max_completion_tokens=5, temperature=0.2))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "succeeded"
    assert body["response"]["object"] == "chat.completion"
    assert body["response"]["choices"][0]["message"]["content"] == "ok ok ok ok ok"
    assert body["upstream_status"] == 200
    assert body["usage"]["output_tokens"] == 5
    assert body["usage"]["input_tokens"] == body["response"]["usage"]["prompt_tokens"]
    assert body["usage"]["estimated_output_tokens"] == 5
    assert body["attempts"] == 1
    assert body["timing"]["queue_seconds"] >= 0 and body["timing"]["upstream_seconds"] > 0

    [seen] = fake_upstream.received(marker)
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {OPENAI_KEY}"  # the provider key, not the client's
    assert seen.body["model"] == "gpt-test"
    assert seen.body["temperature"] == 0.2  # the payload is passed through as sent


def test_anthropic_request_goes_through_the_sdk_to_the_upstream_and_back(
    api: httpx.Client, fake_upstream: FakeUpstream, marker: str
) -> None:
    r = submit(api, "anthropic", "claude-test", chat(marker, max_tokens=3, system="be brief"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "succeeded"
    assert body["response"]["type"] == "message"
    assert body["response"]["content"][0]["text"] == "ok ok ok"
    # Cached input tokens count as input.
    assert body["usage"]["input_tokens"] == body["response"]["usage"]["input_tokens"] + 2
    assert body["usage"]["output_tokens"] == 3

    [seen] = fake_upstream.received(marker)
    assert seen.path == "/v1/messages"
    assert ANTHROPIC_KEY in (seen.headers.get("x-api-key"), seen.headers.get("authorization", "")[7:])
    assert seen.body["system"] == "be brief"


@pytest.mark.parametrize(("model", "shape"), [("mock-gpt", "chat.completion"), ("mock-claude", "message")])
def test_mock_provider_answers_in_its_configured_shape(
    api: httpx.Client, model: str, shape: str, marker: str
) -> None:
    r = submit(api, "mock", model, chat(marker, max_tokens=7))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "succeeded"
    response = body["response"]
    assert response.get("object", response.get("type")) == shape
    assert body["usage"]["output_tokens"] == 7
    assert body["usage"]["input_tokens"] > 0


def test_slow_request_answers_202_then_long_poll_returns_the_result(api: httpx.Client, marker: str) -> None:
    r = submit(api, "mock", "mock-slow", chat(marker), wait=0)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] in ("queued", "running")
    assert r.headers["location"] == body["links"]["self"]

    # A short long-poll returns the current state when the time is up…
    r = api.get(r.headers["location"], params={"wait": 0.1})
    assert r.status_code == 202
    assert r.json()["status"] in ("queued", "running")

    # …and a long one returns as soon as the request is done.
    r = api.get(body["links"]["self"], params={"wait": 30})
    assert r.status_code == 200
    assert r.json()["status"] == "succeeded"
    assert "location" not in r.headers


def test_post_waits_only_as_long_as_asked(api: httpx.Client, marker: str) -> None:
    r = submit(api, "mock", "mock-slow", chat(marker), wait=0.2)
    assert r.status_code == 202
    assert api.get(r.headers["location"], params={"wait": 30}).json()["status"] == "succeeded"


def test_upstream_client_error_fails_the_request_with_status_and_body_passed_through(
    api: httpx.Client, fake_upstream: FakeUpstream, marker: str
) -> None:
    upstream_error = {
        "error": {"message": f"bad messages {marker}", "type": "invalid_request_error", "code": None}
    }
    r = submit(api, "openai", "gpt-test", chat(marker, fake={"status": 400, "body": upstream_error}))
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "failed"
    assert body["upstream_status"] == 400
    assert body["error"]["upstream"] == upstream_error
    assert body["error"]["message"] == f"bad messages {marker}"
    assert body["error"]["transient"] is False
    assert body["attempts"] == 1
    assert len(fake_upstream.received(marker)) == 1  # a 400 is not retried


def test_transient_upstream_error_is_retried_and_then_succeeds(
    api: httpx.Client, fake_upstream: FakeUpstream, marker: str
) -> None:
    r = submit(
        api,
        "anthropic",
        "claude-test",
        chat(marker, max_tokens=2, fake={"fail_times": 1, "key": marker, "status": 529}),
    )
    body = r.json()
    assert body["status"] == "succeeded", body
    assert body["attempts"] == 2
    assert len(fake_upstream.received(marker)) == 2


def test_transient_errors_give_up_after_the_configured_attempts(
    api: httpx.Client, fake_upstream: FakeUpstream, marker: str
) -> None:
    r = submit(api, "openai", "gpt-test", chat(marker, fake={"fail_times": 99, "key": marker, "status": 503}))
    body = r.json()
    assert body["status"] == "failed"
    assert body["upstream_status"] == 503
    assert body["error"]["transient"] is True
    assert body["attempts"] == 3
    assert len(fake_upstream.received(marker)) == 3


def test_unknown_model_is_rejected_naming_the_served_models(api: httpx.Client) -> None:
    before = api.get("/completions").json()["results"]
    r = submit(api, "openai", "gpt-nope", {"messages": []})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request"
    assert "openai/gpt-nope is not served" in error["message"]
    assert "openai/gpt-test" in error["message"] and "mock/mock-gpt" in error["message"]
    r = submit(api, "nobody", "mock-gpt", {"messages": []})
    assert r.status_code == 400
    assert api.get("/completions").json()["results"] == before  # nothing persisted


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "gpt-nowhere", "payload": {}}, "model"),  # no provider: not a group nor served
        ({"provider": "mock", "payload": {}}, "model"),
        ({"provider": "mock", "model": "mock-gpt"}, "payload"),
        ({"provider": "mock", "model": "mock-gpt", "payload": ["not", "an", "object"]}, "payload"),
        ({"provider": "mock", "model": "mock-gpt", "payload": {}, "wait": -1}, "wait"),
        ({"provider": "mock", "model": "mock-gpt", "payload": {}, "wait": "soon"}, "wait"),
        ({"provider": ["mock"], "model": "mock-gpt", "payload": {}}, "provider"),
        ({"provider": "mock", "model": "mock-gpt", "payload": {"model": "other"}}, "payload"),
        ({"provider": "mock", "model": "mock-gpt", "payload": {"stream": True}}, "payload"),
    ],
)
def test_invalid_fields_get_400_naming_the_field_and_persist_nothing(
    api: httpx.Client, body: dict[str, Any], field: str
) -> None:
    r = api.post("/completions", json=body)
    assert r.status_code == 400, r.text
    assert field in r.json()["error"]["fields"]
    assert api.get("/completions").json()["results"] == []


def test_malformed_json_gets_400_json(api: httpx.Client) -> None:
    r = api.post(
        "/completions", content=b'{"provider": "mock",', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "parse_error"


def test_oversized_body_gets_413_before_anything_is_stored(api: httpx.Client) -> None:
    huge = "x" * (1_048_576 + 10)
    r = submit(api, "mock", "mock-gpt", {"messages": [{"role": "user", "content": huge}]})
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "payload_too_large"
    assert api.get("/completions").json()["results"] == []


def test_missing_or_wrong_key_gets_401_json(web: Any) -> None:
    url = f"{web.url}/api/v1/completions"
    r = httpx.post(url, json={})
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "not_authenticated"
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = httpx.get(url, headers={"Authorization": "Bearer lb-wrong"})
    assert r.status_code == 401
    assert r.json()["error"]["message"] == "Invalid API key."
    r = httpx.get(url, headers={"Authorization": "Basic abc"})
    assert r.status_code == 401


def test_a_client_cannot_see_or_cancel_another_clients_request(
    api: httpx.Client, web: Any, make_key: Any, marker: str
) -> None:
    mine = submit(api, "mock", "mock-slow", chat(marker), wait=0).json()
    other = {"Authorization": f"Bearer {make_key('other')}"}
    for method in ("GET", "DELETE"):
        r = httpx.request(method, mine["links"]["self"], headers=other)
        assert r.status_code == 404, (method, r.text)
        assert r.json()["error"]["type"] == "not_found"
    assert httpx.get(f"{web.url}/api/v1/completions", headers=other).json()["results"] == []
    assert api.get(mine["links"]["self"], params={"wait": 30}).json()["status"] == "succeeded"


def test_unknown_or_malformed_id_is_404_json(api: httpx.Client) -> None:
    assert api.get("/completions/00000000-0000-0000-0000-000000000000").status_code == 404
    r = api.get("/completions/not-a-uuid")
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found"


def test_cancelling_a_finished_request_is_a_conflict(api: httpx.Client, marker: str) -> None:
    done = submit(api, "mock", "mock-gpt", chat(marker)).json()
    assert done["status"] == "succeeded"
    r = api.delete(done["links"]["self"])
    assert r.status_code == 409
    assert "succeeded" in r.json()["error"]["message"]


def test_requests_wait_for_a_worker_and_cancelled_ones_never_run(
    api: httpx.Client, worker: Any, fake_upstream: FakeUpstream, marker: str
) -> None:
    worker.stop()
    try:
        keep = submit(api, "openai", "gpt-test", chat(f"{marker}-keep"), wait=0).json()
        drop = submit(api, "openai", "gpt-test", chat(f"{marker}-drop"), wait=0).json()
        assert api.get(keep["links"]["self"], params={"wait": 1}).json()["status"] == "queued"

        r = api.delete(drop["links"]["self"])
        assert r.status_code == 200
        assert r.json()["status"] == "cancelled"
    finally:
        from tests.conftest import _worker_alive

        worker.start(ready=_worker_alive)

    assert api.get(keep["links"]["self"], params={"wait": 30}).json()["status"] == "succeeded"
    assert len(fake_upstream.received(f"{marker}-keep")) == 1
    assert api.get(drop["links"]["self"]).json()["status"] == "cancelled"
    assert fake_upstream.received(f"{marker}-drop") == []


def test_list_shows_only_own_requests_newest_first(api: httpx.Client, marker: str) -> None:
    first = submit(api, "mock", "mock-gpt", chat(marker)).json()
    second = submit(api, "mock", "mock-gpt", chat(marker)).json()
    listed = api.get("/completions").json()["results"]
    assert [item["id"] for item in listed] == [second["id"], first["id"]]


def test_the_documented_examples_are_valid_requests(api: httpx.Client, web: Any) -> None:
    """Swagger's "Try it out" bodies: every example of POST /api/v1/completions is accepted."""
    schema = httpx.get(f"{web.url}/api/schema/", params={"format": "json"}, timeout=30).json()
    post = schema["paths"]["/api/v1/completions"]["post"]
    examples = post["requestBody"]["content"]["application/json"]["examples"]
    assert len(examples) >= 3
    for name, example in examples.items():
        r = api.post("/completions", json={**example["value"], "wait": 30})
        assert r.status_code == 200 and r.json()["status"] == "succeeded", (name, r.text)
    # The errors are documented, in the one shape they have.
    assert {"400", "401", "403", "429"} <= set(post["responses"])
    error = post["responses"]["400"]["content"]["application/json"]["schema"]["$ref"]
    assert error.endswith("/Error")
