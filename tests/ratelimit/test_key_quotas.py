"""Per-key quotas, through the live stack: waiting its turn, failing fast, allowed models, and the
x-ratelimit-* headers the caller sees."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import openai
import pytest

from completions.models import ApiKey, ServedModel
from completions.selectors import api_key_get_by_raw
from ratelimit.models import KeyQuota

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def key_with_quota(make_key: Any, django_db_blocker: Any) -> Any:
    """A fresh key with a quota (in force once committed: autocommit here)."""

    def make(models: tuple[str, ...] = (), **quota: Any) -> str:
        raw = make_key("quota")
        with django_db_blocker.unblock():
            key: ApiKey = api_key_get_by_raw(raw_key=raw)
            kq = KeyQuota.objects.create(api_key=key, **quota)
            if models:
                kq.allowed_models.set(ServedModel.objects.filter(name__in=models))
        return raw

    return make


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_over_its_key_quota_a_request_waits_its_turn(web: Any, worker: Any, key_with_quota: Any) -> None:
    raw = key_with_quota(requests_per_minute=60, burst_seconds=1)  # one request per second
    client = openai.OpenAI(base_url=f"{web.url}/v1", api_key=raw, max_retries=0, timeout=60)
    results: list[Any] = []
    started = time.monotonic()

    def call(i: int) -> None:
        try:
            results.append(
                client.chat.completions.create(model="mock-gpt", messages=user(str(i)), max_tokens=1)
            )
        except Exception as exc:  # asserted below
            results.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, openai.types.chat.ChatCompletion) for r in results), results
    assert time.monotonic() - started >= 1.8  # the second and third waited about 1 s each


def test_a_fail_fast_key_gets_429_with_retry_after(web: Any, worker: Any, key_with_quota: Any) -> None:
    raw = key_with_quota(requests_per_minute=2, burst_seconds=60, fail_fast=True)  # two, then one per 30 s
    headers = {"Authorization": f"Bearer {raw}"}
    body = {"model": "mock-gpt", "messages": user("hi"), "max_tokens": 1}
    first = httpx.post(f"{web.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert (
        httpx.post(f"{web.url}/v1/chat/completions", json=body, headers=headers, timeout=30).status_code
        == 200
    )
    refused = httpx.post(f"{web.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limit_exceeded"
    assert 25 <= int(refused.headers["retry-after"]) <= 31
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    api = httpx.post(
        f"{web.url}/api/v1/completions",
        json={"provider": "mock", "model": "mock-gpt", "payload": {"messages": user("x")}},
        headers=headers,
    )
    assert api.status_code == 429 and "retry-after" in api.headers
    assert api.headers["x-ratelimit-limit-requests"] == "2"
    assert api.headers["x-ratelimit-remaining-requests"] == "0"
    # Nothing was stored for the refused requests.
    listed = httpx.get(f"{web.url}/api/v1/completions", headers=headers).json()["results"]
    assert len(listed) == 2


def test_a_key_may_be_limited_to_some_models(web: Any, worker: Any, key_with_quota: Any) -> None:
    raw = key_with_quota(models=("mock-gpt",))
    client = openai.OpenAI(base_url=f"{web.url}/v1", api_key=raw, max_retries=0, timeout=30)
    assert client.chat.completions.create(model="mock-gpt", messages=user("ok"), max_tokens=1).choices
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="gpt-test", messages=user("no"), max_tokens=1)
    r = httpx.post(
        f"{web.url}/api/v1/completions",
        json={"provider": "openai", "model": "gpt-test", "payload": {"messages": user("no")}},
        headers={"Authorization": f"Bearer {raw}"},
    )
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_denied"


def test_key_and_model_limits_apply_together(
    web: Any, worker: Any, key_with_quota: Any, fake_upstream: Any, marker: str
) -> None:
    raw = key_with_quota(tokens_per_minute=60000, burst_seconds=1)  # 1,000 tokens per second
    client = openai.OpenAI(base_url=f"{web.url}/v1", api_key=raw, max_retries=0, timeout=60)
    for i in range(3):
        r = client.chat.completions.create(model="gpt-rpm", messages=user(f"{marker} #{i:03d}"), max_tokens=2)
        assert r.choices[0].message.content == "ok ok"
    assert [r for r in fake_upstream.rejected if marker in str(r.body)] == []
