"""The OpenAI- and Anthropic-compatible endpoints, with the official SDKs as clients, against the
live web and worker processes (and the fake upstream behind them)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.live import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def key(web: Any, worker: Any, make_key: Any) -> str:
    return make_key("sdk")


@pytest.fixture
def own(web: Any, key: str) -> Any:
    """/api/v1 with the same key as the SDK clients, to look at their requests."""
    with httpx.Client(
        base_url=f"{web.url}/api/v1", headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as c:
        yield c


@pytest.fixture
def oai(web: Any, key: str) -> openai.OpenAI:
    """The official OpenAI SDK pointed at the balancer. Its own retries are off: it must never
    need them."""
    return openai.OpenAI(base_url=f"{web.url}/v1", api_key=key, max_retries=0, timeout=60)


@pytest.fixture
def claude(web: Any, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=web.url, api_key=key, max_retries=0, timeout=60)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_openai_sdk_chat_completion(oai: openai.OpenAI, fake_upstream: FakeUpstream, marker: str) -> None:
    completion = oai.chat.completions.create(model="gpt-test", messages=user(marker), max_tokens=3)
    assert completion.choices[0].message.content == "ok ok ok"
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    assert len(fake_upstream.received(marker)) == 1


def test_each_sdk_lists_the_models_it_can_call(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    models = {m.id: m for m in oai.models.list()}
    assert {"gpt-test", "gpt-rpm", "mock-gpt"} <= set(models)
    assert not {"claude-test", "mock-claude"} & set(models)  # Anthropic's format: not the OpenAI SDK's
    anthropic_models = {m.id for m in claude.models.list()}
    assert {"claude-test", "mock-claude"} <= anthropic_models and not {
        "gpt-test",
        "mock-gpt",
    } & anthropic_models
    # Whether a model can be called: some live worker has its provider's key (mock needs none).
    assert models["gpt-test"].model_extra["available"] is True  # type: ignore[index]
    assert models["mock-gpt"].model_extra["available"] is True  # type: ignore[index]
    wait_until(
        lambda: oai.models.retrieve("gpt-nokey").model_extra["available"] is False,  # type: ignore[index]
        5,
        "a provider without a key marked unavailable",
    )
    assert "API key" in oai.models.retrieve("gpt-nokey").model_extra["unavailable_reason"]  # type: ignore[index]


def test_a_model_no_worker_can_call_is_refused_up_front_with_the_reason(
    oai: openai.OpenAI, api: httpx.Client, marker: str
) -> None:
    reason = "No live worker has its provider's API key"
    wait_until(
        lambda: oai.models.retrieve("gpt-nokey").model_extra["available"] is False, 5, "known unavailable"
    )  # type: ignore[index]
    with pytest.raises(openai.InternalServerError) as refused:
        oai.chat.completions.create(model="gpt-nokey", messages=user(marker), max_tokens=1)
    assert refused.value.status_code == 503 and reason in refused.value.message
    assert refused.value.response.headers["x-should-retry"] == "false"  # the SDK did not try again
    native = api.post(
        "/completions",
        json={"provider": "nokey", "model": "gpt-nokey", "payload": {"messages": user(marker)}},
    )
    assert native.status_code == 503 and reason in native.json()["error"]["message"]
    listed = api.get("/completions", params={"limit": 20}).json()["results"]
    assert not [r for r in listed if r["model"] == "gpt-nokey" and marker in json.dumps(r)]  # nothing queued


def test_both_sdks_retrieve_a_model_and_get_their_own_404_for_others(
    oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    got = oai.models.retrieve("gpt-test")
    assert (got.id, got.object, got.owned_by) == ("gpt-test", "model", "openai")
    assert oai.models.retrieve("gpt-pool").id == "gpt-pool"  # a model group
    info = claude.models.retrieve("claude-test")
    assert (info.id, info.type, info.display_name) == ("claude-test", "model", "claude-test")
    with pytest.raises(openai.NotFoundError) as openai_404:
        oai.models.retrieve("gpt-nowhere")
    assert openai_404.value.body["message"] == "The model 'gpt-nowhere' is not served here."  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as anthropic_404:
        claude.models.retrieve("claude-nowhere")
    assert anthropic_404.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_retrieve_takes_every_name_a_call_takes(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    for name in ("mock-gpt", "mock/mock-gpt", "gpt-pool"):
        assert oai.chat.completions.create(model=name, messages=user("hi"), max_tokens=1).choices
        assert oai.models.retrieve(name).id == name
    assert claude.models.retrieve("mock/mock-claude").id == "mock/mock-claude"


def test_a_model_of_the_other_format_is_refused_with_where_it_is_served(
    oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    with pytest.raises(openai.NotFoundError) as refused:
        oai.chat.completions.create(model="mock-claude", messages=user("hi"), max_tokens=1)
    message = refused.value.body["message"]  # type: ignore[index]
    assert "Anthropic's format" in message and "/v1/messages" in message and "mock-gpt" in message
    with pytest.raises(anthropic.NotFoundError) as refused_too:
        claude.messages.create(model="mock-gpt", messages=user("hi"), max_tokens=1)
    assert "OpenAI's format" in str(refused_too.value) and "/v1/chat/completions" in str(refused_too.value)
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("mock-claude")


def test_a_restricted_key_cannot_retrieve_another_model(
    web: Any, make_key: Any, django_db_blocker: Any
) -> None:
    from completions.models import ServedModel
    from completions.selectors import api_key_get_by_raw
    from ratelimit.models import KeyQuota

    raw = make_key("restricted")
    with django_db_blocker.unblock():
        quota = KeyQuota.objects.create(api_key=api_key_get_by_raw(raw_key=raw), restrict_models=True)
        quota.allowed_models.set(ServedModel.objects.filter(name="mock-gpt"))
    client = openai.OpenAI(base_url=f"{web.url}/v1", api_key=raw, max_retries=0, timeout=60)
    wait_until(lambda: [m.id for m in client.models.list()] == ["mock-gpt"], 5, "the restriction in force")
    assert client.models.retrieve("mock-gpt").id == "mock-gpt"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-test")


def test_openai_sdk_streams_with_and_without_usage(oai: openai.OpenAI, marker: str) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="gpt-test",
            messages=user(marker),
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.split() == ["the", "balancer", "kept", "every"]
    assert (
        chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    )

    plain = list(
        oai.chat.completions.create(model="gpt-test", messages=user(marker), max_tokens=4, stream=True)
    )
    assert all(c.choices for c in plain)  # the usage chunk the balancer asked for is not forwarded
    assert "".join(c.choices[0].delta.content or "" for c in plain) == text


def test_anthropic_sdk_message_and_stream(claude: anthropic.Anthropic, marker: str) -> None:
    message = claude.messages.create(model="claude-test", max_tokens=2, messages=user(marker))
    assert message.content[0].text == "ok ok"
    assert message.usage.output_tokens == 2

    with claude.messages.stream(model="claude-test", max_tokens=3, messages=user(marker)) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "the balancer kept"
    assert final.usage.output_tokens == 3


def test_anthropic_sdk_counts_tokens_locally(
    claude: anthropic.Anthropic, fake_upstream: FakeUpstream, marker: str
) -> None:
    counted = claude.messages.count_tokens(model="claude-test", messages=user(marker * 10))
    assert counted.input_tokens >= len(marker * 10) // 4
    assert fake_upstream.received(marker) == []  # answered by the balancer itself


def test_mock_models_speak_their_format(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    assert (
        oai.chat.completions.create(
            model="mock-gpt", messages=user("hi"), max_tokens=2
        ).usage.completion_tokens
        == 2
    )
    assert (
        claude.messages.create(model="mock-claude", max_tokens=2, messages=user("hi")).usage.output_tokens
        == 2
    )
    with pytest.raises(openai.NotFoundError):  # mock-claude speaks Anthropic's format only
        oai.chat.completions.create(model="mock-claude", messages=user("hi"))


def test_errors_come_in_each_apis_own_format(
    web: Any, oai: openai.OpenAI, claude: anthropic.Anthropic, marker: str
) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{web.url}/v1", api_key="lb-wrong", max_retries=0).models.list()
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=web.url, api_key="lb-wrong", max_retries=0).messages.create(
            model="claude-test", max_tokens=1, messages=user("x")
        )
    with pytest.raises(openai.NotFoundError) as missing:
        oai.chat.completions.create(model="gpt-nope", messages=user("x"))
    assert "gpt-nope" in str(missing.value)
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="claude-nope", max_tokens=1, messages=user("x"))
    upstream_error = {
        "error": {"message": f"context too long {marker}", "type": "invalid_request_error", "code": None}
    }
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(
            model="gpt-test",
            messages=user(marker),
            extra_body={"fake": {"status": 400, "body": upstream_error}},
        )
    assert f"context too long {marker}" in str(bad.value)
    assert bad.value.response.headers["x-should-retry"] == "false"
    r = httpx.post(f"{web.url}/v1/messages", headers={"x-api-key": "lb-wrong"}, json={})
    assert r.status_code == 401 and r.json()["type"] == "error"


def test_a_burst_over_the_model_limit_looks_like_slow_successes(
    oai: openai.OpenAI, fake_upstream: FakeUpstream, marker: str
) -> None:
    results: list[Any] = []

    def call(i: int) -> None:
        try:
            c = oai.chat.completions.create(
                model="gpt-rpm", messages=user(f"{marker} #{i:03d}"), max_tokens=2
            )
            results.append(c.choices[0].message.content)
        except Exception as exc:  # collected and asserted on below
            results.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["ok ok"] * 20
    assert [r for r in fake_upstream.rejected if marker in str(r.body)] == []


def test_a_client_leaving_mid_stream_aborts_the_upstream_call(
    web: Any, key: str, own: httpx.Client, fake_upstream: FakeUpstream, marker: str
) -> None:
    body = {
        "model": "gpt-test",
        "stream": True,
        "max_tokens": 16,
        "messages": user(marker),
        "fake": {"chunk_ms": 300},  # 16 chunks over ~5 s
    }
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.stream("POST", f"{web.url}/v1/chat/completions", json=body, headers=headers, timeout=30) as r:
        request_id = r.headers["x-request-id"]
        lines = r.iter_lines()
        seen = [next(lines) for _ in range(3)]
        assert any(line.startswith("data: ") for line in seen)
    done = own.get(f"/completions/{request_id}", params={"wait": 10}).json()
    assert done["status"] == "cancelled"
    assert done["started_at"] is not None
    assert 0 < done["usage"]["output_tokens"] < 16
    deadline = time.monotonic() + 10
    while not any(marker in str(a) for a in fake_upstream.aborted) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any(marker in str(a) for a in fake_upstream.aborted)


def test_a_client_leaving_while_queued_takes_its_request_out_of_the_line(
    web: Any, key: str, own: httpx.Client, marker: str
) -> None:
    # mock-deadline serves one request per 10 s: the first takes it, the second waits.
    oai_client = openai.OpenAI(base_url=f"{web.url}/v1", api_key=key, max_retries=0, timeout=1.0)
    first = own.post(
        "/completions",
        json={"provider": "mock", "model": "mock-deadline", "payload": {"messages": user(marker)}, "wait": 0},
    )
    assert first.status_code in (200, 202)
    with pytest.raises(openai.APITimeoutError):
        oai_client.chat.completions.create(model="mock-deadline", messages=user(f"{marker}-gone"))
    mine = own.get("/completions").json()["results"]
    gone = next(r for r in mine if r["id"] != first.json()["id"])
    done = own.get(f"/completions/{gone['id']}", params={"wait": 5}).json()
    assert done["status"] == "cancelled" and done["started_at"] is None


def test_a_model_may_be_named_with_its_provider(oai: openai.OpenAI, marker: str) -> None:
    completion = oai.chat.completions.create(model="openai/gpt-test", messages=user(marker), max_tokens=2)
    assert completion.choices[0].message.content == "ok ok"
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="anthropic/gpt-test", messages=user(marker), max_tokens=2)


def test_a_compatible_calls_deadline_takes_a_waiting_request_out_of_line_and_lets_a_running_one_finish(
    stack_env: dict[str, str], run_dir: Any, worker: Any, make_key: Any
) -> None:
    """BALANCER_COMPAT_MAX_WAIT_SECONDS is the call's deadline: past it, a request still in line
    never reaches the upstream (the 504 says so), and one already running finishes, to be
    fetched by id (the 504 says where)."""
    from tests.live import WebServer

    web = WebServer({**stack_env, "BALANCER_COMPAT_MAX_WAIT_SECONDS": "2"}, run_dir / "logs")
    web.start()
    try:
        key = make_key("deadline")
        headers = {"Authorization": f"Bearer {key}"}
        sdk = openai.OpenAI(base_url=f"{web.url}/v1", api_key=key, max_retries=0, timeout=60)
        own = httpx.Client(base_url=f"{web.url}/api/v1", headers=headers, timeout=30)
        # mock-patience grants one request a minute: the first takes it, the next two wait.
        sdk.chat.completions.create(model="mock-patience", messages=user("first"), max_tokens=2)
        with pytest.raises(openai.APIStatusError) as waited:
            sdk.chat.completions.create(model="mock-patience", messages=user("second"), max_tokens=2)
        assert waited.value.status_code == 504
        assert "not sent upstream" in waited.value.message
        streamed = httpx.post(
            f"{web.url}/v1/chat/completions",
            json={"model": "mock-patience", "messages": user("third"), "max_tokens": 2, "stream": True},
            headers=headers,
            timeout=30,
        )
        assert streamed.status_code == 504 and "not sent upstream" in streamed.text
        for rid in (waited.value.response.headers["x-request-id"], streamed.headers["x-request-id"]):
            record = own.get(f"/completions/{rid}").json()
            assert record["status"] in ("cancelled", "expired") and record["attempts"] == 0
        assert own.get("/queues/mock/mock-patience").json()["waiting"] == 0

        # An upstream that takes 4 s: the call is running when its 2-s deadline passes.
        with pytest.raises(openai.APIStatusError) as running:
            sdk.chat.completions.create(
                model="gpt-test",
                messages=user("slow"),
                max_tokens=2,
                extra_body={"fake": {"latency_ms": 4000}},
            )
        assert running.value.status_code == 504 and "fetch the result" in running.value.message
        rid = running.value.response.headers["x-request-id"]
        assert own.get(f"/completions/{rid}", params={"wait": 30}).json()["status"] == "succeeded"
    finally:
        web.stop()


def test_calls_held_by_a_web_process_that_was_killed_are_not_paid_for_nobody(
    stack_env: dict[str, str], run_dir: Any, web: Any, worker: Any, make_key: Any
) -> None:
    """A web process SIGKILLed while its clients wait: the requests it held are cancelled before
    any upstream call (nobody could read the answer) — at once, from its lost subscription, not
    once its listener's key has expired."""
    import signal

    from completions.listeners import LISTENER_BEAT_SECONDS, LISTENER_TTL_SECONDS
    from tests.live import WebServer

    doomed = WebServer(stack_env, run_dir / "logs")
    doomed.start()
    key = make_key("orphans")
    headers = {"Authorization": f"Bearer {key}"}

    def call(i: int) -> None:
        body = {"model": "mock-orphans", "messages": user(f"orphan {i}"), "max_tokens": 2}
        try:
            httpx.post(f"{doomed.url}/v1/chat/completions", json=body, headers=headers, timeout=60)
        except httpx.HTTPError:
            pass  # its web process is gone

    # mock-orphans grants one request per 4 s: the second is due 4 s in, the third 8 s in.
    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.2)
    own = httpx.Client(base_url=f"{web.url}/api/v1", headers=headers, timeout=30)
    wait_until(lambda: len(own.get("/completions").json()["results"]) == 3, 10, "the three requests")
    killed_at = datetime.now(UTC)
    doomed.stop(sig=signal.SIGKILL)
    for t in threads:
        t.join(10)
    # The next ones start before the killed process's listener key can have expired.
    assert LISTENER_TTL_SECONDS - LISTENER_BEAT_SECONDS > 4
    # Which of the three the limiter lets go first is whichever the web process admitted first
    # (not always the first created, on a process just started): that one, and any other whose
    # call began before the kill, may be answered; every one claimed after it is cancelled.
    after = 0
    for record in own.get("/completions").json()["results"]:
        ended = own.get(f"/completions/{record['id']}", params={"wait": 40}).json()
        if datetime.fromisoformat(ended["started_at"]) < killed_at:
            assert ended["status"] in ("succeeded", "cancelled"), ended
            continue
        after += 1
        assert ended["status"] == "cancelled", ended
        assert "web process holding its call is gone" in ended["error"]["message"]
    assert after >= 1, "every request began its call before the kill: nothing was tested"
