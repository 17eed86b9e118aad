"""Per-key quotas, through the live stack: waiting its turn, failing fast, allowed models, and the
x-ratelimit-* headers the caller sees."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

import anthropic
import httpx
import openai
import pytest

from completions.models import ApiKey, Provider, ServedModel
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
            quota.setdefault("restrict_models", bool(models))
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
    # A model the key may not use is answered as one that does not exist: nothing tells a
    # restricted key what else is served, nor by which provider.
    with pytest.raises(openai.NotFoundError) as hidden:
        client.chat.completions.create(model="gpt-test", messages=user("no"), max_tokens=1)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="no-such-gpt", messages=user("no"), max_tokens=1)
    assert hidden.value.response.text == unknown.value.response.text.replace("no-such-gpt", "gpt-test")

    def native(provider: str, model: str) -> httpx.Response:
        return httpx.post(
            f"{web.url}/api/v1/completions",
            json={"provider": provider, "model": model, "payload": {"messages": user("no")}},
            headers={"Authorization": f"Bearer {raw}"},
        )

    r, nothing = native("openai", "gpt-test"), native("openai", "no-such-gpt")
    assert r.status_code == nothing.status_code == 400
    assert r.text == nothing.text.replace("no-such-gpt", "gpt-test")


def test_a_restricted_key_sees_only_its_own_models_everywhere(
    web: Any, worker: Any, key_with_quota: Any
) -> None:
    raw = key_with_quota(models=("mock-gpt", "mock-claude"))
    headers = {"Authorization": f"Bearer {raw}"}
    listed = openai.OpenAI(base_url=f"{web.url}/v1", api_key=raw, max_retries=0).models.list()
    assert [m.id for m in listed.data] == ["mock-gpt"]  # the OpenAI SDK's; mock-claude is Anthropic's
    listed_too = anthropic.Anthropic(base_url=web.url, api_key=raw, max_retries=0).models.list()
    assert [m.id for m in listed_too.data] == ["mock-claude"]
    queues = httpx.get(f"{web.url}/api/v1/queues", headers=headers).json()["results"]
    assert sorted(q["model"] for q in queues) == ["mock-claude", "mock-gpt"]
    assert httpx.get(f"{web.url}/api/v1/queues/mock/mock-gpt", headers=headers).status_code == 200
    hidden = httpx.get(f"{web.url}/api/v1/queues/openai/gpt-test", headers=headers)
    unknown = httpx.get(f"{web.url}/api/v1/queues/openai/no-such-model", headers=headers)
    assert hidden.status_code == unknown.status_code == 404  # the same answer as a model not served
    wrong = httpx.post(
        f"{web.url}/api/v1/completions",
        json={"provider": "mock", "model": "nope", "payload": {"messages": user("x")}},
        headers=headers,
    )
    assert wrong.status_code == 400
    assert "Served models: mock/mock-claude, mock/mock-gpt." in wrong.json()["error"]["message"]
    claude = anthropic.Anthropic(base_url=web.url, api_key=raw, max_retries=0)
    counted = claude.messages.count_tokens(model="mock-claude", messages=user("hello"))
    assert counted.input_tokens > 0
    with pytest.raises(anthropic.NotFoundError):  # as a model that does not exist
        claude.messages.count_tokens(model="claude-test", messages=user("hello"))


def test_deleting_a_keys_last_allowed_model_leaves_it_none(
    web: Any, worker: Any, key_with_quota: Any, django_db_blocker: Any, marker: str
) -> None:
    name = f"mock-doomed-{marker[-6:]}"
    with django_db_blocker.unblock():
        doomed = ServedModel.objects.create(provider=Provider.objects.get(name="mock"), name=name)
    raw = key_with_quota(models=(name,))
    client = openai.OpenAI(base_url=f"{web.url}/v1", api_key=raw, max_retries=0, timeout=30)
    assert client.chat.completions.create(model=name, messages=user("ok"), max_tokens=1).choices
    with pytest.raises(openai.NotFoundError):  # not allowed: answered as not served
        client.chat.completions.create(model="mock-gpt", messages=user("no"), max_tokens=1)
    with django_db_blocker.unblock():
        doomed.delete()
        assert KeyQuota.objects.get(api_key=api_key_get_by_raw(raw_key=raw)).allowed_models.count() == 0

    def refused() -> bool:
        try:
            client.chat.completions.create(model="mock-gpt", messages=user("still no"), max_tokens=1)
        except openai.NotFoundError:
            return True
        return False

    # In force everywhere within BALANCER_REGISTRY_CACHE_SECONDS; refused the whole time.
    for _ in range(10):
        assert refused()
        time.sleep(0.2)
    assert [m.id for m in client.models.list().data] == []


def test_restricting_a_key_to_models_is_explicit_in_the_admin(django_db_blocker: Any, make_key: Any) -> None:
    from django.contrib.auth import get_user_model
    from django.test import Client

    raw = make_key("admin-restrict")
    with django_db_blocker.unblock():
        key = api_key_get_by_raw(raw_key=raw)
        admin = get_user_model().objects.create_superuser(f"kq{raw[-8:]}", "a@example.com", "pw-tests-only")
        browser = Client()
        browser.force_login(admin)
        model = ServedModel.objects.get(name="mock-gpt")
        form = {
            "name": key.name,
            "is_active": "on",
            "weight": "1",
            "max_priority": "default",
            "quota-TOTAL_FORMS": "1",
            "quota-INITIAL_FORMS": "0",
            "quota-0-burst_seconds": "60",
            "quota-0-allowed_models": [str(model.pk)],
            "budget-TOTAL_FORMS": "0",
            "budget-INITIAL_FORMS": "0",
        }
        answer = browser.post(f"/admin/completions/apikey/{key.pk}/change/", form)
        assert answer.status_code == 302, answer.content.decode()[:2000]
        quota = KeyQuota.objects.get(api_key=key)
        assert quota.restrict_models  # choosing models means "only these"
        assert list(quota.allowed_models.all()) == [model]


def test_key_and_model_limits_apply_together(
    web: Any, worker: Any, key_with_quota: Any, fake_upstream: Any, marker: str
) -> None:
    raw = key_with_quota(tokens_per_minute=60000, burst_seconds=1)  # 1,000 tokens per second
    client = openai.OpenAI(base_url=f"{web.url}/v1", api_key=raw, max_retries=0, timeout=60)
    for i in range(3):
        r = client.chat.completions.create(model="gpt-rpm", messages=user(f"{marker} #{i:03d}"), max_tokens=2)
        assert r.choices[0].message.content == "ok ok"
    assert [r for r in fake_upstream.rejected if marker in str(r.body)] == []


def pool_requests(c: httpx.Client, marker: str, count: int) -> list[dict[str, Any]]:
    """Send `count` requests to the model group gpt-pool and wait for them all."""
    body = {"model": "gpt-pool", "wait": 0}
    ids = [
        c.post(
            "/completions", json={**body, "payload": {"messages": user(f"{marker} {i}"), "max_tokens": 8}}
        ).json()["id"]
        for i in range(count)
    ]
    return [c.get(f"/completions/{rid}", params={"wait": 30}).json() for rid in ids]


def test_a_keys_quota_applies_to_a_model_group(
    web: Any, worker: Any, key_with_quota: Any, marker: str
) -> None:
    # One request per second: its requests pass their key's line, then the group's.
    raw = key_with_quota(requests_per_minute=60, burst_seconds=1)
    with httpx.Client(
        base_url=f"{web.url}/api/v1", headers={"Authorization": f"Bearer {raw}"}, timeout=60
    ) as c:
        done = pool_requests(c, marker, 3)
    assert [d["status"] for d in done] == ["succeeded"] * 3
    assert {d["group"] for d in done} == {"gpt-pool"}
    started = sorted(datetime.fromisoformat(d["started_at"].replace("Z", "+00:00")) for d in done)
    assert (started[-1] - started[0]).total_seconds() >= 1.5  # paced by the key's one per second


def test_a_key_allowed_one_deployment_of_a_group_is_served_only_there(
    web: Any, worker: Any, key_with_quota: Any, django_db_blocker: Any, marker: str
) -> None:
    raw = key_with_quota(models=("gpt-pool",))
    with django_db_blocker.unblock():
        quota = KeyQuota.objects.get(api_key=api_key_get_by_raw(raw_key=raw))
        quota.allowed_models.set(ServedModel.objects.filter(provider__name="pool-b", name="gpt-pool"))
    with httpx.Client(
        base_url=f"{web.url}/api/v1", headers={"Authorization": f"Bearer {raw}"}, timeout=60
    ) as c:
        time.sleep(1.2)  # BALANCER_REGISTRY_CACHE_SECONDS: the web process sees the narrowed key
        done = pool_requests(c, marker, 6)
        groups = c.get("/queues").json()["groups"]
    assert [(d["status"], d["provider"]) for d in done] == [("succeeded", "pool-b")] * 6
    pool = next(g for g in groups if g["group"] == "gpt-pool")
    assert [(d["provider"], d["model"]) for d in pool["deployments"]] == [("pool-b", "gpt-pool")]
