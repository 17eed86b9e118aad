"""Limits on what one key can take from everyone else, through the live stack: requests waiting in
line (per key, across the deployment) and calls held open (per key, per web process)."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import openai
import pytest
from django.db import transaction

from completions.models import Provider, ServedModel
from completions.selectors import api_key_get_by_raw
from ratelimit.models import KeyQuota, Quota

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def stuck_model(django_db_blocker: Any, marker: str) -> str:
    """A model that serves one request, then none for a minute: what comes after waits."""
    name = f"mock-stuck-{marker[-6:]}"
    # In one transaction: no process may see the model without its quota (and run one unlimited).
    with django_db_blocker.unblock(), transaction.atomic():
        served = ServedModel.objects.create(provider=Provider.objects.get(name="mock"), name=name)
        Quota.objects.create(served_model=served, requests_per_minute=1, burst_seconds=60)
    return name


def _key(make_key: Any, django_db_blocker: Any, **quota: Any) -> str:
    raw = make_key("abuse")
    with django_db_blocker.unblock():
        KeyQuota.objects.create(api_key=api_key_get_by_raw(raw_key=raw), **quota)
    return raw


def _body(model: str, text: str = "x", wait: float = 0) -> dict[str, Any]:
    return {
        "provider": "mock",
        "model": model,
        "wait": wait,
        "payload": {"messages": [{"role": "user", "content": text}]},
    }


def test_a_key_with_its_queue_full_gets_429_and_other_keys_are_still_served(
    web: Any, worker: Any, make_key: Any, django_db_blocker: Any, stuck_model: str
) -> None:
    raw = _key(make_key, django_db_blocker, max_queued=3)
    api = httpx.Client(base_url=f"{web.url}/api/v1", headers={"Authorization": f"Bearer {raw}"}, timeout=30)
    assert api.post("/completions", json=_body(stuck_model, wait=30)).json()["status"] == "succeeded"
    queued = [api.post("/completions", json=_body(stuck_model)) for _ in range(3)]
    assert [r.status_code for r in queued] == [202, 202, 202]
    refused = api.post("/completions", json=_body(stuck_model))
    assert refused.status_code == 429
    assert "already has 3 requests waiting" in refused.json()["error"]["message"]
    assert float(refused.headers["retry-after"]) > 0
    client = openai.OpenAI(base_url=f"{web.url}/v1", api_key=raw, max_retries=0)
    with pytest.raises(openai.RateLimitError):  # on every path, and even to another model
        client.chat.completions.create(model="mock-gpt", messages=[{"role": "user", "content": "x"}])
    other = httpx.post(
        f"{web.url}/api/v1/completions",
        json=_body(stuck_model),
        headers={"Authorization": f"Bearer {make_key('other')}"},
        timeout=30,
    )
    assert other.status_code == 202  # another key's request is taken
    for r in queued:  # one leaves the line: the key may queue one more
        api.delete(r.json()["links"]["self"])
    assert api.post("/completions", json=_body(stuck_model)).status_code == 202


def test_a_key_holds_at_most_its_cap_of_open_calls_and_gets_them_back(
    web: Any, worker: Any, make_key: Any, django_db_blocker: Any, stuck_model: str
) -> None:
    raw = _key(make_key, django_db_blocker, max_waiting=2)
    headers = {"Authorization": f"Bearer {raw}"}
    api = httpx.Client(base_url=f"{web.url}/api/v1", headers=headers, timeout=60)
    assert api.post("/completions", json=_body(stuck_model, wait=30)).json()["status"] == "succeeded"
    entered = threading.Barrier(3)
    answers: list[httpx.Response] = []

    def long_poll(i: int) -> None:
        entered.wait()
        answers.append(api.post("/completions", json=_body(stuck_model, f"poll {i}", wait=60)))

    polls = [threading.Thread(target=long_poll, args=(i,)) for i in range(2)]
    for t in polls:
        t.start()
    entered.wait()

    from completions.models import CompletionRequest
    from tests.live import wait_until

    def polls_in() -> bool:
        # A long-poll takes its slot in the same step that writes its request.
        with django_db_blocker.unblock():
            return (
                CompletionRequest.objects.filter(
                    model=stuck_model, payload__messages__0__content__startswith="poll"
                ).count()
                == 2
            )

    wait_until(polls_in, 20, "the two long-polls in")
    # A third long-poll is answered at once, not held: the key has its two open calls.
    extra = api.post("/completions", json=_body(stuck_model, "third", wait=60), timeout=10)
    assert extra.status_code == 202
    api.delete(extra.json()["links"]["self"])
    refused = httpx.post(
        f"{web.url}/v1/chat/completions",
        json={"model": "mock-gpt", "messages": [{"role": "user", "content": "x"}]},
        headers=headers,
        timeout=30,
    )
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_exceeded"
    with django_db_blocker.unblock():
        waiting = CompletionRequest.objects.filter(
            api_key=api_key_get_by_raw(raw_key=raw), status="queued", model=stuck_model
        )
        for row in waiting:
            api.delete(f"/completions/{row.id}")
    for t in polls:
        t.join(30)
    assert sorted(r.json()["status"] for r in answers) == ["cancelled", "cancelled"]

    # Calls abandoned by their clients give their slots back too.
    for _ in range(3):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{web.url}/v1/chat/completions",
                json={"model": stuck_model, "messages": [{"role": "user", "content": "gone"}]},
                headers=headers,
                timeout=1.0,
            )
    wait_until(
        lambda: (
            httpx.post(
                f"{web.url}/v1/chat/completions",
                json={"model": "mock-gpt", "messages": [{"role": "user", "content": "x"}]},
                headers=headers,
                timeout=30,
            ).status_code
            == 200
        ),
        10,
        "a call accepted once the abandoned ones were given back",
    )


def test_a_flooded_slow_model_leaves_worker_threads_to_the_others(
    api: httpx.Client, worker: Any, django_db_blocker: Any, marker: str
) -> None:
    # The session's worker has 20 threads, so one model may hold 10 of them in upstream calls.
    slow = [
        api.post("/completions", json=_body("mock-slow", f"{marker} slow {i}")).json()["id"]
        for i in range(30)
    ]
    from completions.models import CompletionRequest
    from tests.live import wait_until

    def running() -> int:
        with django_db_blocker.unblock():
            return CompletionRequest.objects.filter(id__in=slow, status="running").count()

    wait_until(lambda: running() >= 10, 20, "the slow model's calls started")
    assert running() <= 10  # its share of the worker, no more
    quick = api.post("/completions", json=_body("mock-gpt", f"{marker} quick", wait=30)).json()
    assert quick["status"] == "succeeded"
    with django_db_blocker.unblock():
        first_slow_done = CompletionRequest.objects.filter(id__in=slow, status="succeeded").order_by(
            "finished_at"
        )
        # Served while the slow model's first calls were still running: it did not wait for a thread.
        assert (
            not first_slow_done.exists()
            or first_slow_done[0].finished_at > CompletionRequest.objects.get(id=quick["id"]).finished_at
        )

    def all_done() -> bool:
        with django_db_blocker.unblock():
            return CompletionRequest.objects.filter(id__in=slow, status="succeeded").count() == len(slow)

    wait_until(all_done, 60, "every slow request served")
    with django_db_blocker.unblock():
        assert set(CompletionRequest.objects.filter(id__in=slow).values_list("attempts", flat=True)) == {1}
