"""The per-request fast paths of the performance work: the registry cache, the reply channel, the
one-trip ASGI handler, the one-statement claim, and kombu's channel keeping its client. Each is
checked for giving the same answers as the slow path it replaced."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import pytest
from django.test import override_settings
from django.utils import timezone

from balancer_project.redis_conn import get_redis
from completions import rows
from completions.events import REPLY_PREFIX
from completions.models import ApiKey, CompletionRequest, CompletionStatus
from completions.registry_cache import MAX_ENTRIES, VERSION_KEY, RegistryCache
from completions.services import api_key_create
from tests.live import wait_until

pytestmark = pytest.mark.timeout(120)


# -- registry cache ------------------------------------------------------------------------------


@override_settings(BALANCER_REGISTRY_CACHE_SECONDS=60)
def test_registry_cache_keeps_values_until_the_version_in_redis_moves() -> None:
    cache, loads = RegistryCache(), []

    def load() -> str:
        loads.append(1)
        return f"value {len(loads)}"

    assert cache.get("k", load) == "value 1"
    assert cache.get("k", load) == "value 1"
    get_redis().incr(VERSION_KEY)  # another process changed the registry
    assert cache.get("k", load) == "value 1"  # not looked at again within the cache time
    with override_settings(BALANCER_REGISTRY_CACHE_SECONDS=0):
        assert cache.get("k", load) == "value 2"
        assert cache.get("k", load) == "value 2"
    assert len(loads) == 2


@override_settings(BALANCER_REGISTRY_CACHE_SECONDS=60)
def test_registry_cache_keeps_no_misses_and_stays_bounded() -> None:
    cache, loads = RegistryCache(), []

    def miss() -> None:
        loads.append(1)

    cache.get("unknown key", miss)
    cache.get("unknown key", miss)
    assert len(loads) == 2  # clients choose what they look up: a miss is never kept
    assert cache.get("no quota", lambda: None, keep_empty=True) is None
    assert cache.get("no quota", lambda: "loaded again", keep_empty=True) is None
    for n in range(MAX_ENTRIES + 5):
        cache.get(("model", n), lambda n=n: n + 1)
    assert len(cache._entries) <= MAX_ENTRIES


def test_a_key_revoked_elsewhere_is_refused_by_the_web_within_the_cache_time(
    web: Any, worker: Any, django_db_blocker: Any
) -> None:
    from django.conf import settings

    with django_db_blocker.unblock():
        key, raw = api_key_create(name=f"revoke-{uuid.uuid4().hex[:6]}")
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "cache"}]}
    headers = {"Authorization": f"Bearer {raw}"}
    with httpx.Client(base_url=web.url, headers=headers, timeout=30) as client:
        assert client.post("/v1/chat/completions", json=body).status_code == 200  # now cached
        with django_db_blocker.unblock():
            stored = ApiKey.objects.get(pk=key.pk)
            stored.is_active = False
            stored.save()
        revoked_at = time.monotonic()
        wait_until(
            lambda: (
                client.post("/v1/messages/count_tokens", json={**body, "max_tokens": 1}).status_code == 401
            ),
            settings.BALANCER_REGISTRY_CACHE_SECONDS + 5,
            "the revoked key to be refused",
        )
    assert time.monotonic() - revoked_at <= settings.BALANCER_REGISTRY_CACHE_SECONDS + 1


# -- reply channel and the one-trip handler ------------------------------------------------------------


def test_a_compatible_answer_comes_by_the_reply_channel_with_every_header(
    web: Any, worker: Any, make_key: Any, django_db_blocker: Any
) -> None:
    headers = {"Authorization": f"Bearer {make_key()}"}
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "reply"}]}
    with httpx.Client(base_url=web.url, headers=headers, timeout=30) as client:
        client.post("/v1/chat/completions", json=body)  # the web's listener is subscribed after it
        r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    assert r.json()["object"] == "chat.completion"
    assert int(r.headers["content-length"]) == len(r.content)
    assert r.headers["x-content-type-options"] == "nosniff"  # the middleware's, on the final answer
    assert "allow" not in r.headers
    with django_db_blocker.unblock():
        row = CompletionRequest.objects.get(id=r.headers["x-request-id"])
    assert row.reply_to.startswith(REPLY_PREFIX)  # its worker was told where to send the result
    assert row.status == CompletionStatus.SUCCEEDED
    assert float(r.headers["x-queue-seconds"]) == pytest.approx(row.queue_seconds, abs=0.001)


def test_a_result_that_arrives_before_its_waiter_is_kept_for_it() -> None:
    from completions.waiting import listener, wait_for_result

    request_id = str(uuid.uuid4())
    result = {"id": request_id, "status": "succeeded", "response": {"ok": True}}

    async def scenario() -> tuple[dict[str, Any] | None, float]:
        hub = listener()
        await hub.start(timeout=5)
        ticket = hub.ticket()
        assert ticket is not None
        await asyncio.to_thread(get_redis().publish, ticket.channel, json.dumps(result))
        for _ in range(200):  # until the listener has it, with nobody waiting yet
            if request_id in hub.results:
                break
            await asyncio.sleep(0.01)
        started = time.monotonic()
        got = await wait_for_result(request_id, 30, ticket)
        return got, time.monotonic() - started

    got, waited = asyncio.run(scenario())
    assert got == result
    assert waited < 1  # answered from what was kept, not after the 30 s wait


# -- one-statement claim --------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_claim_returns_the_row_as_the_orm_reads_it_and_only_once() -> None:
    key, _ = api_key_create(name="claim")
    request = CompletionRequest.objects.create(
        api_key=key,
        provider="openai",
        model="gpt-test",
        payload={"messages": [], "n": [1, "x"]},
        max_wait=3.5,
    )
    claimed = rows.claim(str(request.id), timezone.now(), "t1")
    assert claimed is not None and claimed.claim == "t1"
    fresh = CompletionRequest.objects.get(id=request.id)
    for field in CompletionRequest._meta.concrete_fields:
        assert getattr(claimed, field.attname) == getattr(fresh, field.attname), field.name
    assert claimed.status == CompletionStatus.RUNNING and claimed.attempts == 1
    assert rows.claim(str(request.id), timezone.now(), "t2") is None  # a second delivery gets nothing
    assert not rows.finish(str(request.id), CompletionStatus.QUEUED, status=CompletionStatus.FAILED)
    # Fenced: only the attempt that holds the claim may write.
    assert not rows.finish(
        str(request.id), CompletionStatus.RUNNING, claim="t2", status=CompletionStatus.FAILED
    )
    assert rows.finish(
        str(request.id),
        CompletionStatus.RUNNING,
        claim="t1",
        status=CompletionStatus.SUCCEEDED,
        response={"a": 1},
    )
    assert CompletionRequest.objects.get(id=request.id).response == {"a": 1}


# -- broker ---------------------------------------------------------------------------------------


def test_the_broker_channel_builds_its_redis_client_once() -> None:
    from balancer_project.broker import Transport
    from balancer_project.celery import app

    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, Transport)
        channel = conn.default_channel
        assert channel._create_client() is channel._create_client()
