"""Model groups end to end: one public model name served by several deployments (two keys at two
strictly limited fake upstreams; a key the upstream refuses; an upstream that is down), through
the live web and worker processes, with /api/v1 and the official SDK as clients."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from ratelimit import limiter
from ratelimit.lines import group_line
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.timeout(120)


def chat(marker: str, i: int = 0) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"{marker} #{i:03d}"}], "max_tokens": 8}


def wait_all(api: httpx.Client, ids: list[str], timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    return [
        api.get(f"/completions/{rid}", params={"wait": max(0.1, deadline - time.monotonic())}).json()
        for rid in ids
    ]


def group_state(api: httpx.Client, name: str) -> dict[str, Any]:
    groups = api.get("/queues").json()["groups"]
    return next(g for g in groups if g["group"] == name)


def test_a_group_pools_its_deployments_limits_in_strict_order_without_upstream_429(
    api: httpx.Client, fake_upstream: FakeUpstream, second_upstream: FakeUpstream, marker: str
) -> None:
    # Two keys of 10 requests per second (a burst of 10) each; 40 requests submitted at once.
    count = 40
    ids = [
        api.post("/completions", json={"model": "gpt-pool", "payload": chat(marker, i), "wait": 0}).json()[
            "id"
        ]
        for i in range(count)
    ]
    results = wait_all(api, ids)
    assert [r["status"] for r in results] == ["succeeded"] * count
    assert {r["group"] for r in results} == {"gpt-pool"}
    # Each deployment's own limit held: neither upstream refused one.
    assert [r for r in fake_upstream.rejected + second_upstream.rejected if marker in str(r.body)] == []
    # Both keys served a fair part, and each result says which one.
    at_a, at_b = len(fake_upstream.received(marker)), len(second_upstream.received(marker))
    assert at_a + at_b == count and min(at_a, at_b) >= count // 4
    by = [r["provider"] for r in results]
    assert by.count("pool-a") == at_a and by.count("pool-b") == at_b
    assert all(
        r["served_by"] == [{"attempt": 1, "deployment": f"{r['provider']}/gpt-pool", "status": 200}]
        for r in results
    )
    # One line across both deployments: granted in strict arrival order.
    tickets = limiter.grant_tickets(group_line("gpt-pool"), count)
    assert tickets == sorted(tickets, reverse=True) and len(set(tickets)) == count

    state = group_state(api, "gpt-pool")
    assert [(d["provider"], d["model"]) for d in state["deployments"]] == [
        ("pool-a", "gpt-pool"),
        ("pool-b", "gpt-pool"),
    ]
    assert all(d["limits"]["requests_per_minute"] == 600 for d in state["deployments"])
    assert state["waiting"] == 0


def test_the_sdk_reaches_a_group_by_its_name_and_is_told_the_deployment(
    web: Any, api: httpx.Client, marker: str
) -> None:
    key = api.headers["Authorization"].removeprefix("Bearer ")
    client = openai.OpenAI(base_url=f"{web.url}/v1", api_key=key, max_retries=0, timeout=60)
    listed = {m.id: m for m in client.models.list().data}
    assert sorted(listed["gpt-pool"].model_extra["deployments"]) == ["pool-a/gpt-pool", "pool-b/gpt-pool"]  # type: ignore[index]
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-pool", messages=[{"role": "user", "content": f"{marker} sdk"}], max_tokens=8
    )
    assert raw.headers["x-balancer-deployment"] in ("pool-a/gpt-pool", "pool-b/gpt-pool")
    assert raw.parse().choices[0].message.content
    # Streamed through the group too.
    chunks = list(
        client.chat.completions.create(
            model="gpt-pool",
            messages=[{"role": "user", "content": f"{marker} stream"}],
            max_tokens=8,
            stream=True,
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_a_refused_key_and_a_down_upstream_cool_down_and_their_requests_move_on(
    web: Any, api: httpx.Client, fake_upstream: FakeUpstream, marker: str
) -> None:
    # Ties go to the first listed deployment: the refused key, then the one that is down.
    first = api.post(
        "/completions", json={"model": "gpt-failover", "payload": chat(marker, 0), "wait": 30}
    ).json()
    assert first["status"] == "succeeded", first
    assert [s["deployment"] for s in first["served_by"]] == [
        "failover-revoked/gpt-failover",
        "failover-down/gpt-failover",
        "failover-ok/gpt-failover",
    ]
    assert first["provider"] == "failover-ok" and first["attempts"] == 3
    # Both broken deployments cool down, visibly; the next requests go straight to the good one.
    state = {d["provider"]: d["cooldown"] for d in group_state(api, "gpt-failover")["deployments"]}
    assert state["failover-revoked"]["last_fault"] == "auth" and state["failover-revoked"]["seconds_left"] > 0
    assert state["failover-down"]["last_fault"] == "down" and state["failover-down"]["seconds_left"] > 0
    assert state["failover-ok"]["seconds_left"] == 0
    ids = [
        api.post(
            "/completions", json={"model": "gpt-failover", "payload": chat(marker, i), "wait": 0}
        ).json()["id"]
        for i in range(1, 6)
    ]
    rest = wait_all(api, ids)
    assert [(r["status"], r["provider"], r["attempts"]) for r in rest] == [
        ("succeeded", "failover-ok", 1)
    ] * 5
    ready = httpx.get(f"{web.url}/ready").json()
    cooling = {
        c["deployment"]: c["last_fault"]
        for c in ready["checks"]["cooling_down"]
        if c["group"] == "gpt-failover"
    }
    assert cooling == {"failover-revoked/gpt-failover": "auth", "failover-down/gpt-failover": "down"}


def test_a_request_pinned_to_one_deployment_goes_only_there(
    api: httpx.Client, fake_upstream: FakeUpstream, second_upstream: FakeUpstream, marker: str
) -> None:
    ids = [
        api.post(
            "/completions",
            json={"provider": "pool-b", "model": "gpt-pool", "payload": chat(marker, i), "wait": 0},
        ).json()["id"]
        for i in range(12)
    ]
    results = wait_all(api, ids)
    assert [(r["status"], r["provider"]) for r in results] == [("succeeded", "pool-b")] * 12
    assert fake_upstream.received(marker) == [] and len(second_upstream.received(marker)) == 12
    assert [r for r in second_upstream.rejected if marker in str(r.body)] == []


def test_a_group_with_no_healthy_deployment_hands_its_requests_to_its_fallback(
    web: Any, api: httpx.Client, second_upstream: FakeUpstream, fake_upstream: FakeUpstream, marker: str
) -> None:
    # gpt-primary's only deployment is down: the first request's attempt cools it down, and the
    # periodic tend moves the request, waiting for its retry, to the fallback gpt-pool.
    first = api.post(
        "/completions", json={"model": "gpt-primary", "payload": chat(marker, 0), "wait": 30}
    ).json()
    assert (first["status"], first["group"], first["fallback_from"]) == (
        "succeeded",
        "gpt-pool",
        "gpt-primary",
    )
    assert [(s["deployment"], s["status"]) for s in first["served_by"]] == [
        ("primary-down/gpt-primary", None),
        (f"{first['provider']}/gpt-pool", 200),
    ]
    # While it cools down, a new request goes to the fallback at once; the answer says where.
    key = api.headers["Authorization"].removeprefix("Bearer ")
    client = openai.OpenAI(base_url=f"{web.url}/v1", api_key=key, max_retries=0, timeout=60)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-primary", messages=[{"role": "user", "content": f"{marker} sdk"}], max_tokens=8
    )
    assert raw.headers["x-balancer-deployment"] in ("pool-a/gpt-pool", "pool-b/gpt-pool")
    second = api.get(f"/completions/{raw.headers['x-request-id']}").json()
    assert (second["group"], second["fallback_from"], second["attempts"]) == ("gpt-pool", "gpt-primary", 1)
    assert len(fake_upstream.received(marker)) + len(second_upstream.received(marker)) == 2


def test_a_request_whose_only_deployment_refuses_its_key_goes_to_the_fallback_mid_flight(
    api: httpx.Client, marker: str
) -> None:
    # gpt-refused's one deployment answers 401: nowhere else in the group, so the very first
    # request goes on to the fallback gpt-pool instead of failing with the 401.
    first = api.post(
        "/completions", json={"model": "gpt-refused", "payload": chat(marker, 0), "wait": 30}
    ).json()
    assert (first["status"], first["group"], first["fallback_from"]) == (
        "succeeded",
        "gpt-pool",
        "gpt-refused",
    )
    assert [s["status"] for s in first["served_by"]] == [401, 200]


def test_a_request_whose_deadline_its_group_cannot_meet_goes_to_the_fallback(
    api: httpx.Client, marker: str
) -> None:
    first = api.post(
        "/completions", json={"model": "gpt-lane", "payload": chat(marker, 0), "wait": 30}
    ).json()
    assert (first["status"], first["group"], first["fallback_from"]) == ("succeeded", "gpt-lane", "")
    # The next one in gpt-lane would wait about 10 s: with 3 s to wait, it goes to gpt-pool; with
    # no deadline it waits its turn in gpt-lane.
    hurried = api.post(
        "/completions", json={"model": "gpt-lane", "payload": chat(marker, 1), "wait": 30, "max_wait": 3}
    ).json()
    assert (hurried["status"], hurried["group"], hurried["fallback_from"]) == (
        "succeeded",
        "gpt-pool",
        "gpt-lane",
    )
    patient = api.post(
        "/completions", json={"model": "gpt-lane", "payload": chat(marker, 2), "wait": 0}
    ).json()
    assert (patient["status"], patient["group"]) == ("queued", "gpt-lane")
    api.delete(f"/completions/{patient['id']}")
