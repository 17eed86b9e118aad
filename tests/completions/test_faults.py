"""Faults, with real processes: a worker killed mid-call, Redis losing its data, and history
retention. The sweeper (Celery beat's task) is called directly, as beat would."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
import redis
from django.utils import timezone

from completions.maintenance import completion_requests_purge, completion_requests_sweep
from completions.models import CompletionRequest, CompletionStatus
from completions.services import api_key_create
from tests.conftest import _worker_alive
from tests.fake_upstream import FakeUpstream
from tests.live import wait_until

pytestmark = pytest.mark.timeout(180)


def user(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def test_a_request_whose_worker_was_killed_runs_again_and_finishes(
    api: httpx.Client, worker: Any, django_db_blocker: Any, marker: str
) -> None:
    # mock-conc: one call at a time, 1.5 s each; the killed call holds its only slot.
    r = api.post(
        "/completions", json={"provider": "mock", "model": "mock-conc", "payload": user(marker), "wait": 0}
    )
    rid = r.json()["id"]
    wait_until(lambda: api.get(f"/completions/{rid}").json()["status"] == "running", 10, "the call to start")
    worker.stop(sig=signal.SIGKILL)
    assert api.get(f"/completions/{rid}").json()["status"] == "running"  # stuck, as far as the row knows
    # A worker again: beat's tend, run there, finds the dead attempt's lease ended (it may never
    # have been written: the call was younger than the first renewal) and runs the request again.
    worker.start(ready=_worker_alive)
    done = api.get(f"/completions/{rid}", params={"wait": 30}).json()
    assert done["status"] == "succeeded"
    assert done["attempts"] == 2
    # The lost attempt's slot came back (else the rerun could not have started), and nothing leaked.
    line = api.get("/queues/mock/mock-conc").json()
    assert line["in_flight"] == 0 and line["waiting"] == 0


def test_a_finished_request_is_never_run_again_by_the_sweeper(
    api: httpx.Client, django_db_blocker: Any, marker: str
) -> None:
    done = api.post(
        "/completions", json={"provider": "mock", "model": "mock-gpt", "payload": user(marker)}
    ).json()
    assert done["status"] == "succeeded"
    with django_db_blocker.unblock():
        completion_requests_sweep(queued_after=0)
    again = api.get(f"/completions/{done['id']}").json()
    assert (again["status"], again["attempts"], again["finished_at"]) == ("succeeded", 1, done["finished_at"])


@pytest.mark.skipif(
    not os.environ.get("REDIS_URL", "").startswith("unix://"), reason="flushes Redis: embedded only"
)
def test_requests_waiting_when_redis_loses_its_data_all_finish(
    api: httpx.Client, fake_upstream: FakeUpstream, django_db_blocker: Any, marker: str
) -> None:
    count = 30  # 10 per second on gpt-rpm: most are still waiting when Redis is flushed
    ids = [
        api.post(
            "/completions",
            json={"provider": "openai", "model": "gpt-rpm", "payload": user(f"{marker} #{i:03d}"), "wait": 0},
        ).json()["id"]
        for i in range(count)
    ]
    time.sleep(0.5)
    redis.Redis.from_url(os.environ["REDIS_URL"]).flushall()
    with django_db_blocker.unblock():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            completion_requests_sweep(queued_after=0)  # beat would run it every 30 s
            statuses = [api.get(f"/completions/{rid}").json()["status"] for rid in ids]
            if all(s in ("succeeded", "failed", "cancelled", "expired") for s in statuses):
                break
            time.sleep(1)
    assert statuses == ["succeeded"] * count
    # Each reached the upstream once: the sweeper did not run any twice.
    arrivals = [r for r in fake_upstream.received(marker) if r not in fake_upstream.rejected]
    assert len(arrivals) == count
    # And the accounting is whole again: nothing in flight, nothing waiting, buckets refilling to full.

    def whole() -> bool:
        q = api.get("/queues/openai/gpt-rpm").json()
        b = q["buckets"]["requests"]
        return q["in_flight"] == 0 and q["waiting"] == 0 and b["level"] >= b["capacity"] - 0.01

    wait_until(whole, 10, "the gpt-rpm line to be whole again")


@pytest.mark.django_db
def test_history_past_the_retention_period_is_deleted() -> None:
    key, _ = api_key_create(name="retention")
    old = timezone.now() - timedelta(days=40)
    kept = CompletionRequest.objects.create(api_key=key, provider="mock", model="m", payload={})
    gone = CompletionRequest.objects.create(
        api_key=key,
        provider="mock",
        model="m",
        payload={},
        status=CompletionStatus.SUCCEEDED,
        finished_at=old,
    )
    waiting = CompletionRequest.objects.create(
        api_key=key, provider="mock", model="m", payload={}, finished_at=old
    )
    assert completion_requests_purge(older_than_days=30) == 1
    assert set(CompletionRequest.objects.values_list("id", flat=True)) == {kept.id, waiting.id}
    assert not CompletionRequest.objects.filter(id=gone.id).exists()
    assert completion_requests_purge(older_than_days=0) == 0


def test_a_retry_that_would_pass_the_deadline_fails_at_once(
    api: httpx.Client, fake_upstream: FakeUpstream, marker: str
) -> None:
    # The upstream asks for 30 s; the request may wait 5 s in all.
    fake = {"fail_times": 9, "key": marker, "status": 429, "headers": {"retry-after": "30"}}
    payload = {"messages": [{"role": "user", "content": marker}], "fake": fake}
    body = {"provider": "openai", "model": "gpt-test", "payload": payload, "max_wait": 5, "wait": 20}
    done = api.post("/completions", json=body).json()
    assert done["status"] == "failed"
    assert done["upstream_status"] == 429 and done["attempts"] == 1
    assert len(fake_upstream.received(marker)) == 1


def test_a_client_repolling_after_a_web_restart_gets_its_result(
    api: httpx.Client, worker: Any, start_web: Any, marker: str
) -> None:
    other = start_web()
    headers = dict(api.headers)
    body = {"provider": "mock", "model": "mock-slow", "payload": user(marker), "wait": 0}
    rid = httpx.post(f"{other.url}/api/v1/completions", json=body, headers=headers).json()["id"]
    other.stop()  # the process the client talked to is gone
    assert api.get(f"/completions/{rid}", params={"wait": 30}).json()["status"] == "succeeded"
