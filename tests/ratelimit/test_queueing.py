"""The rate-limit layer end to end: real web and worker processes, Redis, and a fake upstream
that enforces the same limits and answers 429 when they are exceeded."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from completions.models import ServedModel
from tests.conftest import LIMITED, fake_limits
from tests.fake_upstream import FakeUpstream, Limit
from tests.live import wait_until

pytestmark = pytest.mark.timeout(180)


def chat(marker: str, i: int = 0, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"{marker} #{i:03d}"}], **extra}


def submit(
    api: httpx.Client, provider: str, model: str, payload: dict[str, Any], **extra: Any
) -> httpx.Response:
    return api.post("/completions", json={"provider": provider, "model": model, "payload": payload, **extra})


def wait_all(api: httpx.Client, ids: list[str], timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    out = []
    for rid in ids:
        left = max(0.1, deadline - time.monotonic())
        out.append(api.get(f"/completions/{rid}", params={"wait": left}).json())
    return out


def arrivals(fake: FakeUpstream, marker: str) -> list[int]:
    """Request numbers in the order the upstream received them."""
    return [int(r.body["messages"][0]["content"].split("#")[1]) for r in fake.received(marker)]


def queue(api: httpx.Client, provider: str, model: str) -> dict[str, Any]:
    return api.get(f"/queues/{provider}/{model}").json()


def test_requests_over_the_rate_all_succeed_in_submission_order_without_upstream_429(
    api: httpx.Client, fake_upstream: FakeUpstream, marker: str
) -> None:
    count = 25  # a burst of 10, then 10 per second; submitted in a few ms
    ids = [submit(api, "openai", "gpt-rpm", chat(marker, i), wait=0).json()["id"] for i in range(count)]
    results = wait_all(api, ids)
    assert [r["status"] for r in results] == ["succeeded"] * count
    assert arrivals(fake_upstream, marker) == list(range(count))
    assert [r for r in fake_upstream.rejected if marker in str(r.body)] == []
    # Paced by the limit after the burst: 10 per second (generous margin for scheduling).
    times = [r.at for r in fake_upstream.received(marker)]
    assert times[-1] - times[0] >= (count - 10) * 0.1 * 0.9
    # The last one waited its turn: it started a refill of 15 requests after the first, however
    # long the submissions took to arrive on a loaded machine.
    first, last = (
        datetime.fromisoformat(r["started_at"].replace("Z", "+00:00")) for r in (results[0], results[-1])
    )
    assert (last - first).total_seconds() >= (count - 10) * 0.1 * 0.9
    assert results[-1]["timing"]["queue_seconds"] > 0


def test_token_limit_paces_requests_and_usage_is_settled_back_to_full_capacity(
    api: httpx.Client, fake_upstream: FakeUpstream, marker: str
) -> None:
    # Each request reserves ~10 prompt + 100 output tokens of a 200-token bucket and really uses
    # 16 output tokens: settlement gives the rest back.
    count = 12
    ids = [
        submit(api, "openai", "gpt-tpm", chat(marker, i, max_tokens=100), wait=0).json()["id"]
        for i in range(count)
    ]
    results = wait_all(api, ids)
    assert [r["status"] for r in results] == ["succeeded"] * count
    assert arrivals(fake_upstream, marker) == list(range(count))
    assert [r for r in fake_upstream.rejected if marker in str(r.body)] == []
    assert all(r["usage"]["estimated_input_tokens"] == r["usage"]["input_tokens"] for r in results)

    def full() -> bool:
        q = queue(api, "openai", "gpt-tpm")
        bucket = q["buckets"]["tokens"]
        return q["in_flight"] == 0 and q["waiting"] == 0 and bucket["level"] >= bucket["capacity"] - 0.01

    wait_until(full, 10, "the token bucket to refill to capacity (no leaked reservations)")


def test_two_web_and_two_worker_processes_share_one_limit(
    api: httpx.Client, fake_upstream: FakeUpstream, marker: str, start_web: Any, start_worker: Any
) -> None:
    second_web = start_web()
    start_worker()
    headers = dict(api.headers)
    other = httpx.Client(base_url=f"{second_web.url}/api/v1", headers=headers, timeout=60)
    count = 24
    ids = []
    for i in range(count):
        client = api if i % 2 == 0 else other
        ids.append(submit(client, "openai", "gpt-shared", chat(marker, i), wait=0).json()["id"])
    results = wait_all(api, ids)
    other.close()
    assert [r["status"] for r in results] == ["succeeded"] * count
    assert arrivals(fake_upstream, marker) == list(range(count))
    assert [r for r in fake_upstream.rejected if marker in str(r.body)] == []


def test_a_quota_edited_in_the_admin_takes_effect_without_restart(
    api: httpx.Client, marker: str, django_db_blocker: Any, fake_upstream: FakeUpstream
) -> None:
    # One request per 10 s: the first goes, the second waits.
    first = submit(api, "openai", "gpt-edit", chat(marker, 0), wait=0).json()
    second = submit(api, "openai", "gpt-edit", chat(marker, 1), wait=0).json()
    assert api.get(f"/completions/{first['id']}", params={"wait": 30}).json()["status"] == "succeeded"
    assert api.get(f"/completions/{second['id']}", params={"wait": 1}).json()["status"] == "queued"
    assert queue(api, "openai", "gpt-edit")["waiting"] == 1

    # The provider raised our limit; the operator follows in the admin.
    fake_upstream.limits["gpt-edit"] = Limit(rpm=6000, burst=10)
    with django_db_blocker.unblock():
        admin = get_user_model().objects.create_superuser(f"a{marker[-8:]}", "a@example.com", "pw-tests-only")
        client = Client()
        client.force_login(admin)
        quota = ServedModel.objects.get(provider__name="openai", name="gpt-edit").quota
        form = {
            "served_model": quota.served_model_id,
            "requests_per_minute": 6000,
            "burst_seconds": 10,
        }
        r = client.post(f"/admin/ratelimit/quota/{quota.pk}/change/", form)
        assert r.status_code == 302, r.content.decode()[:2000]
    try:
        done = api.get(f"/completions/{second['id']}", params={"wait": 5}).json()
        assert done["status"] == "succeeded"
    finally:
        fake_upstream.limits.update(fake_limits())
        with django_db_blocker.unblock():
            ServedModel.objects.get(provider__name="openai", name="gpt-edit").quota.__class__.objects.filter(
                pk=quota.pk
            ).update(requests_per_minute=LIMITED["gpt-edit"]["requests_per_minute"])


def test_a_request_that_can_never_fit_is_refused_at_submission(api: httpx.Client, marker: str) -> None:
    r = submit(api, "mock", "mock-small", chat(marker, max_tokens=1000))
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "exceeds_limit"
    # 600 tokens per minute, a 60 s bucket less the default 0.1 s margin: 599.
    assert "1000 output reserved" in error["message"] and "at most 599" in error["message"]
    assert api.get("/completions").json()["results"] == []


def test_a_request_still_waiting_at_its_deadline_expires(api: httpx.Client, marker: str) -> None:
    first = submit(api, "mock", "mock-deadline", chat(marker, 0), wait=0).json()
    late = submit(api, "mock", "mock-deadline", chat(marker, 1), wait=0, max_wait=0.5).json()
    r = api.get(f"/completions/{late['id']}", params={"wait": 10})
    body = r.json()
    assert body["status"] == "expired"
    assert "max_wait" in body["error"]["message"]
    assert body["started_at"] is None
    assert api.get(f"/completions/{first['id']}", params={"wait": 10}).json()["status"] == "succeeded"
    assert queue(api, "mock", "mock-deadline")["waiting"] == 0


def test_a_cancelled_request_leaves_the_line_and_the_next_one_runs(api: httpx.Client, marker: str) -> None:
    running = submit(api, "mock", "mock-conc", chat(marker, 0), wait=0).json()
    waiting = submit(api, "mock", "mock-conc", chat(marker, 1), wait=0).json()
    after = submit(api, "mock", "mock-conc", chat(marker, 2), wait=0).json()
    assert api.delete(f"/completions/{waiting['id']}").json()["status"] == "cancelled"
    results = wait_all(api, [running["id"], after["id"]])
    assert [r["status"] for r in results] == ["succeeded", "succeeded"]
    # One slot: the third started only after the first finished.
    assert results[1]["started_at"] >= results[0]["finished_at"]
    assert api.get(f"/completions/{waiting['id']}").json()["started_at"] is None


def test_queues_endpoint_and_wait_header(api: httpx.Client, marker: str) -> None:
    r = submit(api, "mock", "mock-gpt", chat(marker))
    assert float(r.headers["x-queue-seconds"]) >= 0
    listing = api.get("/queues").json()["results"]
    names = {(q["provider"], q["model"]) for q in listing}
    assert ("openai", "gpt-rpm") in names and ("mock", "mock-gpt") in names
    rpm = queue(api, "openai", "gpt-rpm")
    assert rpm["limits"]["requests_per_minute"] == 600
    # 600 per minute, a 1 s burst less the default 0.1 s margin
    assert rpm["buckets"]["requests"]["capacity"] == pytest.approx(9.0)
    assert {"waiting", "in_flight", "estimated_wait_seconds", "counters"} <= set(rpm)
    assert queue(api, "mock", "mock-gpt")["limits"] is None
    assert api.get("/queues/mock/nope").status_code == 404


def test_the_bucket_follows_a_lower_limit_the_provider_reports_and_recovers(
    api: httpx.Client, marker: str
) -> None:
    def send(limit: int, flavour_header: str = "x-ratelimit-limit-requests") -> None:
        payload = chat(marker, max_tokens=50, fake={"headers": {flavour_header: str(limit)}})
        assert submit(api, "openai", "gpt-tpm", payload).json()["status"] == "succeeded"

    assert queue(api, "openai", "gpt-tpm")["limits_in_force_per_minute"] == {"tokens": 12000.0}
    send(1000, "x-ratelimit-limit-tokens")  # the provider says our token limit is lower
    assert queue(api, "openai", "gpt-tpm")["limits_in_force_per_minute"] == {"tokens": 1000.0}
    send(50000, "x-ratelimit-limit-tokens")  # ...and then that it is back
    assert queue(api, "openai", "gpt-tpm")["limits_in_force_per_minute"] == {"tokens": 12000.0}
    send(10)  # a requests limit the quota does not have: nothing to follow
    assert queue(api, "openai", "gpt-tpm")["limits_in_force_per_minute"] == {"tokens": 12000.0}


def test_a_queued_request_says_its_place_in_line_and_when_it_may_start(
    api: httpx.Client, marker: str
) -> None:
    """The record of a request waiting in a line (the 202 and every read) carries its position and
    its estimated start; once it runs, it carries none."""
    body = {
        "provider": "patient",
        "model": "gpt-patient",  # 2 per minute, a burst of 1: one at once, then one every 30 s
        "payload": {"messages": [{"role": "user", "content": marker}], "max_tokens": 2},
        "wait": 0,
    }
    answers = [api.post("/completions", json=body) for _ in range(3)]
    assert [a.status_code for a in answers] == [202] * 3
    last = api.get(answers[-1].json()["links"]["self"]).json()
    place = last["queue"]
    assert place["line"] == "model" and place["position"] >= 1, place
    assert place["estimated_wait_seconds"] > 20  # two ahead of it at one per 30 s
    start = datetime.fromisoformat(place["estimated_start"].replace("Z", "+00:00"))
    assert start > datetime.now(UTC) + timedelta(seconds=15)
    assert answers[-1].json()["queue"]["position"] == place["position"]  # the 202 said so too
    # Listed, it says nothing (a line's read per row would cost a list of 500 as many reads).
    listed = api.get("/completions", params={"limit": 5}).json()["results"]
    assert all(r["queue"] is None for r in listed)
    for answer in answers:  # leave the line as found
        api.delete(answer.json()["links"]["self"])
