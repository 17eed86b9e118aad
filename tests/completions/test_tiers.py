"""Tiers: which way each request is sent (completions.tiers), through the live stack against a
fake upstream that offers flex processing for gpt-flex only, as strictly as OpenAI: flex asked of
any other model is a 400, and flex without capacity is a 429 that is not a rate limit."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from django.contrib.auth import get_user_model
from django.test import Client, override_settings
from django.urls import reverse

from completions.config import ConfigError, config_apply
from completions.models import Priority, Tier, TierAsked
from completions.tiers import asked_tier, choose
from tests.fake_upstream import FakeUpstream
from tests.prices import cost_at

pytestmark = pytest.mark.timeout(120)

# gpt-flex's prices per million tokens (tests/conftest.py): standard in 2 / out 8, flex 1 / 4.
STANDARD = (Decimal(2), Decimal(8))
FLEX = (Decimal(1), Decimal(4))


def _submit(api: httpx.Client, marker: str, **fields: Any) -> dict[str, Any]:
    body = {
        "model": "gpt-flex",
        "payload": {"messages": [{"role": "user", "content": marker}], "max_tokens": 5},
        "wait": 30,
        **fields,
    }
    response = api.post("/completions", json=body)
    assert response.status_code == 200, response.text
    record = response.json()
    assert record["status"] == "succeeded", record
    return record


def _sent(upstream: FakeUpstream, marker: str) -> list[str | None]:
    """The service tier of every call the upstream received for `marker`, in order."""
    return [r.body.get("service_tier") for r in upstream.received(marker)]


@override_settings(BALANCER_FLEX_SECONDS=900)
def test_choosing_a_tier() -> None:
    def pick(asked: str = TierAsked.AUTO, priority: str = Priority.BATCH, **kw: Any) -> tuple[str, bool]:
        return choose(
            asked=asked,
            priority=priority,
            served_tier=kw.get("served_tier", ""),
            offers_flex=kw.get("offers_flex", True),
            left=kw.get("left"),
        )

    # Batch-class work without a deadline, or with time for a slow call, goes flex (and back to
    # realtime should flex be unavailable); with less time, or once realtime, realtime.
    assert pick() == (Tier.FLEX, True)
    assert pick(left=3600) == (Tier.FLEX, True)
    assert pick(left=600) == (Tier.STANDARD, False)
    assert pick(served_tier=Tier.STANDARD) == (Tier.STANDARD, False)
    assert pick(served_tier=Tier.FLEX) == (Tier.FLEX, True)
    # Other classes, and deployments without flex, realtime; a pinned tier is kept.
    assert pick(priority=Priority.DEFAULT) == (Tier.STANDARD, False)
    assert pick(offers_flex=False) == (Tier.STANDARD, False)
    assert pick(asked=TierAsked.REALTIME) == (Tier.STANDARD, False)
    assert pick(asked=TierAsked.FLEX, priority=Priority.INTERACTIVE, left=5) == (Tier.FLEX, False)
    # What a request asks for: the field or header, else its body's own service_tier.
    assert asked_tier(None, {"service_tier": "flex"}) == TierAsked.FLEX
    assert asked_tier(None, {"service_tier": "default"}) == TierAsked.AUTO
    assert asked_tier(" Standard ", {}) == TierAsked.REALTIME
    assert pick(asked=TierAsked.BATCH) == (Tier.STANDARD, False)  # a worker runs it only when late
    with pytest.raises(ValueError, match="tier must be one of auto, realtime, flex, batch"):
        asked_tier("cheap", {})


def test_batch_work_goes_flex_at_flex_prices_and_everything_else_realtime(
    api: httpx.Client, fake_upstream: FakeUpstream, marker: str, django_db_blocker: Any
) -> None:
    batch = _submit(api, f"{marker} batch", priority="batch", max_wait=3600)
    assert batch["tier"] == {"asked": "auto", "served": "flex", "batch": None}
    assert _sent(fake_upstream, f"{marker} batch") == ["flex"]
    assert batch["response"]["service_tier"] == "flex"
    assert Decimal(batch["cost"]["actual"]) == cost_at(batch, FLEX)
    assert batch["cost"]["prices"] == {"input": "1.000000", "cached_input": "1.000000", "output": "4.000000"}

    # /metrics counts the call per tier and what flex saved; the dashboard shows both per line.
    metrics = httpx.get(f"{str(api.base_url).removesuffix('/api/v1/')}/metrics", timeout=30).text
    assert 'balancer_tier_calls_total{model="openai/gpt-flex",tier="flex"}' in metrics
    saved = [
        x for x in metrics.splitlines() if x.startswith('balancer_saved_usd_total{model="openai/gpt-flex"')
    ]
    assert saved and float(saved[0].split()[-1]) > 0
    with django_db_blocker.unblock():
        staff = Client()
        staff.force_login(
            get_user_model().objects.create_superuser(f"root-{marker}", "r@example.com", "pw-tests")
        )
        state = json.dumps(staff.get(reverse("dashboard-state")).json())
    assert re.search(r'"cheap_calls_last_hour": [1-9]', state)
    assert re.search(r'"saved_last_hour": "0\.0*[1-9]', state)

    default = _submit(api, f"{marker} default")
    assert default["tier"] == {"asked": "auto", "served": "standard", "batch": None}
    assert _sent(fake_upstream, f"{marker} default") == [None]
    assert Decimal(default["cost"]["actual"]) == cost_at(default, STANDARD)

    # A deadline too near for a slow flex call (BALANCER_FLEX_SECONDS, 900), or a pinned tier.
    hurried = _submit(api, f"{marker} hurried", priority="batch", max_wait=60)
    assert hurried["tier"]["served"] == "standard"
    pinned = _submit(api, f"{marker} pinned", priority="batch", tier="realtime")
    assert pinned["tier"] == {"asked": "realtime", "served": "standard", "batch": None}
    assert _sent(fake_upstream, f"{marker} hurried") == _sent(fake_upstream, f"{marker} pinned") == [None]


def test_flex_without_capacity_sends_auto_work_on_realtime_at_once_and_pinned_work_waits_for_flex(
    api: httpx.Client, fake_upstream: FakeUpstream, marker: str
) -> None:
    flex = fake_upstream.flex["gpt-flex"]
    flex.unavailable = 1
    auto = _submit(api, f"{marker} auto", priority="batch")
    # Refused once by flex (not billed, no news about the rate limit), then served realtime.
    assert _sent(fake_upstream, f"{marker} auto") == ["flex", None]
    assert [r.body["messages"][0]["content"] for r in fake_upstream.unavailable][-1] == f"{marker} auto"
    assert auto["attempts"] == 2 and auto["error"] is None
    assert auto["tier"] == {"asked": "auto", "served": "standard", "batch": None}
    assert Decimal(auto["cost"]["actual"]) == cost_at(auto, STANDARD)

    flex.unavailable = 1
    pinned = _submit(api, f"{marker} pinned", tier="flex")
    assert _sent(fake_upstream, f"{marker} pinned") == ["flex", "flex"]
    assert pinned["tier"] == {"asked": "flex", "served": "flex", "batch": None}
    assert Decimal(pinned["cost"]["actual"]) == cost_at(pinned, FLEX)


def test_the_compatible_endpoint_takes_the_tier_from_its_header_or_the_sdks_service_tier(
    web: Any, worker: Any, make_key: Any, fake_upstream: FakeUpstream, marker: str
) -> None:
    client = openai.OpenAI(base_url=f"{web.url}/v1", api_key=make_key("tiers"), max_retries=0, timeout=60)
    messages = [{"role": "user", "content": f"{marker} sdk"}]
    answer = client.chat.completions.create(model="gpt-flex", messages=messages, service_tier="flex")
    assert answer.service_tier == "flex"
    header = client.chat.completions.with_raw_response.create(
        model="gpt-flex",
        messages=[{"role": "user", "content": f"{marker} header"}],
        extra_headers={"x-balancer-tier": "flex"},
    )
    assert header.headers["x-balancer-cost"]
    assert _sent(fake_upstream, f"{marker} sdk") == _sent(fake_upstream, f"{marker} header") == ["flex"]
    # Flex asked of a model that offers none: refused before anything is queued or called.
    with pytest.raises(openai.BadRequestError, match="offers no flex processing"):
        client.chat.completions.create(model="gpt-test", messages=messages, service_tier="flex")
    with pytest.raises(openai.BadRequestError, match="batch is for work nobody waits on"):
        client.chat.completions.create(
            model="gpt-flex", messages=messages, extra_headers={"x-balancer-tier": "batch"}
        )
    with pytest.raises(openai.BadRequestError, match="x-balancer-tier must be one of"):
        client.chat.completions.create(
            model="gpt-flex", messages=messages, extra_headers={"x-balancer-tier": "cheapest"}
        )
    assert len(fake_upstream.received(marker)) == 2


@pytest.mark.django_db
def test_only_a_deployment_in_the_openai_format_offers_flex() -> None:
    registry = {
        "providers": [
            {
                "name": "anthropic-flex",
                "kind": "anthropic",
                "base_url": "http://127.0.0.1:9",
                "models": [
                    {
                        "name": "claude-flex",
                        "prices": {"input": "3", "output": "15", "flex": {"input": "1.5", "output": "7.5"}},
                    }
                ],
            }
        ]
    }
    with pytest.raises(ConfigError, match="Flex processing is OpenAI's"):
        config_apply(registry)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({"input": "1", "output": "4", "enqueued_tokens": "lots"}, "enqueued_tokens must be a whole number"),
        ({"input": "1", "output": "4", "enqueued_tokens": True}, "enqueued_tokens must be a whole number"),
        ({"input": "1", "output": "4", "turnaround_seconds": 0}, "turnaround_seconds"),
        ({"input": "1", "output": "4", "turnaround_seconds": 90000}, "turnaround_seconds"),
        ({"input": "1", "output": "4", "window": 3}, "window"),
    ],
)
def test_the_batch_tiers_own_limits_are_checked(batch: dict[str, Any], message: str) -> None:
    registry = {
        "providers": [
            {
                "name": "openai-batch",
                "kind": "openai",
                "base_url": "http://127.0.0.1:9",
                "models": [{"name": "gpt-b", "prices": {"input": "2", "output": "8", "batch": batch}}],
            }
        ]
    }
    with pytest.raises(ConfigError, match=message):
        config_apply(registry)


@pytest.mark.django_db
def test_only_the_batch_tier_has_an_enqueued_token_limit() -> None:
    registry = {
        "providers": [
            {
                "name": "openai-batch",
                "kind": "openai",
                "base_url": "http://127.0.0.1:9",
                "models": [
                    {
                        "name": "gpt-b",
                        "prices": {
                            "input": "2",
                            "output": "8",
                            "flex": {"input": "1", "output": "4", "enqueued_tokens": 5},
                        },
                    }
                ],
            }
        ]
    }
    with pytest.raises(ConfigError, match="enqueued_tokens"):
        config_apply(registry)
