"""Fair share and priority end to end: client keys with weights and highest classes, through the
live web and worker processes, with /api/v1 and the official SDK as clients."""

from __future__ import annotations

import time
from datetime import datetime
from statistics import median
from typing import Any

import httpx
import openai
import pytest

from completions.lines import arrival_ticket
from completions.models import ApiKey
from completions.selectors import api_key_get_by_raw
from ratelimit import limiter
from ratelimit.lines import group_line

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def key(make_key: Any, django_db_blocker: Any) -> Any:
    """A fresh client key with a weight and a highest priority (seen by the live processes once
    their registry cache has moved on)."""

    def make(weight: int = 1, max_priority: str = "default") -> str:
        raw = make_key("sched")
        with django_db_blocker.unblock():
            ApiKey.objects.filter(pk=api_key_get_by_raw(raw_key=raw).pk).update(
                weight=weight, max_priority=max_priority
            )
        return raw

    return make


def client(web: Any, raw: str) -> httpx.Client:
    return httpx.Client(base_url=f"{web.url}/api/v1", headers={"Authorization": f"Bearer {raw}"}, timeout=60)


def send(c: httpx.Client, model: str, text: str, **extra: Any) -> dict[str, Any]:
    payload = {"messages": [{"role": "user", "content": text}], "max_tokens": 8}
    return c.post("/completions", json={"model": model, "payload": payload, "wait": 0, **extra}).json()


def succeeds(c: httpx.Client, rid: str) -> None:
    done = c.get(f"/completions/{rid}", params={"wait": 60}).json()
    assert done["status"] == "succeeded", done


def grant_order(
    a: httpx.Client, b: httpx.Client, ids: dict[str, list[str]], group: str = "gpt-fair"
) -> list[str]:
    """Both keys' requests in the order their group's line granted them: its audit logs arrival
    tickets (the requests' creation times in microseconds). Start times would not do: two grants
    a millisecond apart may be claimed by their threads the other way round."""
    ticket_of = {}
    for c, mine in ((a, ids["a"]), (b, ids["b"])):
        for rid in mine:
            created = c.get(f"/completions/{rid}").json()["created_at"]
            ticket_of[arrival_ticket(datetime.fromisoformat(created.replace("Z", "+00:00")))] = rid
    granted = [ticket for kind, ticket, _ in reversed(limiter.audit(group_line(group))) if kind == "grant"]
    return [ticket_of[t] for t in granted if t in ticket_of]


def test_a_fair_group_serves_a_heavier_key_faster_and_each_key_in_order(
    web: Any, worker: Any, key: Any, marker: str
) -> None:
    light, heavy = key(weight=1), key(weight=3)
    time.sleep(1.2)  # BALANCER_REGISTRY_CACHE_SECONDS
    with client(web, light) as a, client(web, heavy) as b:
        # Both keys backlogged at 10 requests per second: interleaved submissions.
        ids = {"a": [], "b": []}
        for i in range(24):
            ids["a"].append(send(a, "gpt-fair", f"{marker} a{i}")["id"])
            ids["b"].append(send(b, "gpt-fair", f"{marker} b{i}")["id"])
        for flow, c in (("a", a), ("b", b)):
            for rid in ids[flow]:
                succeeds(c, rid)
        order = grant_order(a, b, ids)
        flows = next(g for g in a.get("/queues").json()["groups"] if g["group"] == "gpt-fair")["flows"]
    # Each key's own requests in its submission order.
    assert [r for r in order if r in ids["a"]] == ids["a"] and [r for r in order if r in ids["b"]] == ids["b"]
    # The heavier key is through its backlog well before the lighter one.
    position = {rid: i for i, rid in enumerate(order)}
    assert position[ids["b"][-1]] < position[ids["a"][-1]]
    assert median(position[r] for r in ids["b"]) < median(position[r] for r in ids["a"])
    mine = [f for f in flows if f["yours"]]
    assert len(mine) == 1 and mine[0]["granted_last_minute"] == 24


def test_an_interactive_request_goes_before_a_backlog_of_default_ones(
    web: Any, worker: Any, key: Any, marker: str
) -> None:
    flood, urgent = key(), key(max_priority="interactive")
    time.sleep(1.2)
    with client(web, flood) as a, client(web, urgent) as b:
        backlog = [send(a, "gpt-ordered", f"{marker} f{i}")["id"] for i in range(30)]
        rush = send(b, "gpt-ordered", f"{marker} urgent", priority="interactive")
        assert rush["priority"] == "interactive"
        succeeds(b, rush["id"])
        for rid in backlog:
            succeeds(a, rid)
        order = grant_order(a, b, {"a": backlog, "b": [rush["id"]]}, group="gpt-ordered")
    assert [r for r in order if r != rush["id"]] == backlog  # the backlog in its own order
    # Submitted after all 30, it was granted before most of them (the first ones went at once).
    assert len(order) - 1 - order.index(rush["id"]) >= 10


def test_a_key_may_not_ask_above_its_highest_priority(web: Any, worker: Any, key: Any, marker: str) -> None:
    raw = key(max_priority="default")
    time.sleep(1.2)
    with client(web, raw) as c:
        r = c.post(
            "/completions",
            json={
                "model": "gpt-ordered",
                "priority": "interactive",
                "payload": {"messages": [], "max_tokens": 8},
            },
        )
        assert r.status_code == 403 and "priority default at most" in r.json()["error"]["message"]
        bad = c.post("/completions", json={"model": "gpt-ordered", "priority": "urgent", "payload": {}})
        assert bad.status_code == 400 and "priority" in bad.json()["error"]["fields"]
        batch = send(c, "gpt-ordered", f"{marker} low", priority="batch")
        succeeds(c, batch["id"])
    sdk = openai.OpenAI(base_url=f"{web.url}/v1", api_key=raw, max_retries=0, timeout=60)
    with pytest.raises(openai.PermissionDeniedError, match="priority default at most"):
        sdk.chat.completions.create(
            model="gpt-ordered",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=8,
            extra_headers={"x-balancer-priority": "interactive"},
        )
    with pytest.raises(openai.BadRequestError, match="x-balancer-priority"):
        sdk.chat.completions.create(
            model="gpt-ordered",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=8,
            extra_headers={"x-balancer-priority": "asap"},
        )
    ok = sdk.chat.completions.with_raw_response.create(
        model="gpt-ordered",
        messages=[{"role": "user", "content": f"{marker} sdk"}],
        max_tokens=8,
        extra_headers={"x-balancer-priority": "batch"},
    )
    assert ok.parse().choices[0].message.content
