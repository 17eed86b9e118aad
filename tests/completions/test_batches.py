"""The batch tier through the live stack: batch-class requests the realtime line cannot take soon
go into the providers' own batch jobs (tests.fake_batches: OpenAI's files and batches,
Anthropic's message batches, each with an enqueued-token limit), at the batch prices; what a
batch cannot finish by its deadline is cancelled there and run realtime; nothing is processed
twice. gpt-batch, gpt-batch-slow and claude-batch take one realtime request per 5 s
(tests/conftest.py)."""

from __future__ import annotations

import signal
from collections import Counter
from decimal import Decimal
from typing import Any

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from completions.models import BatchState, ProviderBatch
from tests.fake_batches import BatchTier
from tests.fake_upstream import FakeUpstream
from tests.live import wait_until
from tests.prices import cost_at

pytestmark = pytest.mark.timeout(180)

# Per million tokens (tests/conftest.py batched_model): standard in 2 / out 8, batch in 1 / out 4.
STANDARD = (Decimal(2), Decimal(8))
BATCH = (Decimal(1), Decimal(4))


# Each request's text, by its id: how the fake upstream's realtime calls are matched to requests.
TEXTS: dict[str, str] = {}


def _send(api: httpx.Client, model: str, text: str, fake: dict[str, Any] | None = None, **fields: Any) -> str:
    payload: dict[str, Any] = {"messages": [{"role": "user", "content": text}], "max_tokens": 10}
    if fake is not None:
        payload["fake"] = fake
    response = api.post("/completions", json={"model": model, "payload": payload, "wait": 0, **fields})
    assert response.status_code == 202, response.text
    rid = str(response.json()["id"])
    TEXTS[rid] = text
    return rid


def _ended(api: httpx.Client, ids: list[str], seconds: float = 120) -> list[dict[str, Any]]:
    def all_ended() -> bool:
        return all(
            api.get(f"/completions/{rid}").json()["status"] not in ("queued", "running") for rid in ids
        )

    wait_until(all_ended, seconds, "every request to end")
    return [api.get(f"/completions/{rid}").json() for rid in ids]


def _processed(upstream: FakeUpstream, ids: list[str]) -> Counter[str]:
    """How many times the upstream processed each request, realtime or in a batch."""
    wanted = {TEXTS[rid]: rid for rid in ids}
    counts: Counter[str] = Counter({rid: 0 for rid in ids})
    for record in upstream.requests:
        if record.path in ("/v1/chat/completions", "/v1/messages") and record not in upstream.rejected:
            text = (record.body.get("messages") or [{}])[0].get("content")
            if text in wanted:
                counts[wanted[text]] += 1
    for custom_id, _ in upstream.batches.processed:
        if custom_id in counts:
            counts[custom_id] += 1
    return counts


def test_batch_work_the_line_cannot_take_soon_goes_in_provider_batches_at_batch_prices(
    api: httpx.Client, fake_upstream: FakeUpstream, marker: str, django_db_blocker: Any
) -> None:
    """Fourteen batch-class requests at once: the line takes one realtime, the batches the rest —
    six at a time, the enqueued-token limit (so a second batch waits for the first to end). A
    default-class request and one whose deadline is too near for a batch stay realtime."""
    ids = [_send(api, "gpt-batch", f"{marker} 0", priority="batch")]
    # Its deadline leaves less than a batch's turnaround and reserve (30 + 5 s): it waits for
    # the line, first of its class once the others are collected (ordinary's class goes first).
    rushed = _send(api, "gpt-batch", f"{marker} rushed", priority="batch", max_wait=30)
    ids += [_send(api, "gpt-batch", f"{marker} {i}", priority="batch") for i in range(1, 14)]
    ordinary = _send(api, "gpt-batch", f"{marker} ordinary")
    records = _ended(api, [*ids, rushed, ordinary])
    assert {r["status"] for r in records} == {"succeeded"}, [
        (r["status"], TEXTS[r["id"]], r["tier"], r["error"]) for r in records if r["status"] != "succeeded"
    ]
    by_id = {r["id"]: r for r in records}
    batched = [by_id[rid] for rid in ids if by_id[rid]["tier"]["served"] == "batch"]
    assert len(batched) >= 12, [by_id[rid]["tier"] for rid in ids]
    for record in batched:
        assert record["tier"]["batch"] is not None
        assert Decimal(record["cost"]["actual"]) == cost_at(record, BATCH)
        assert record["response"]["choices"][0]["message"]["content"]
    for record in (by_id[rushed], by_id[ordinary]):
        assert record["tier"]["served"] == "standard"
        assert Decimal(record["cost"]["actual"]) == cost_at(record, STANDARD)
    # Each processed exactly once; the provider refused no batch and no realtime call.
    everyone = [*ids, rushed, ordinary]
    assert set(_processed(fake_upstream, everyone).values()) == {1}
    assert fake_upstream.batches.refused == []
    assert not [r for r in fake_upstream.rejected if marker in str(r.body)]
    with django_db_blocker.unblock():
        batches = ProviderBatch.objects.filter(id__in={r["tier"]["batch"] for r in batched})
        assert batches.count() >= 3
        assert all(b.state == BatchState.ENDED and b.items <= 6 for b in batches)
        assert sum(b.succeeded for b in batches) == len(batched)
        # The admin lists each batch, and its requests through a link.
        admin = Client()
        admin.force_login(
            get_user_model().objects.create_superuser(f"root-{marker}", "root@example.com", "pw-tests-only")
        )
        one = batches.first()
        assert one is not None
        page = admin.get(reverse("admin:completions_providerbatch_change", args=[one.id]))
        assert page.status_code == 200 and one.upstream_id in page.content.decode()
        listed = admin.get(
            reverse("admin:completions_completionrequest_changelist"), {"provider_batch__id__exact": one.id}
        )
        assert listed.status_code == 200
        assert listed.context["cl"].result_count == one.items


def test_a_batch_that_would_miss_its_deadline_is_cancelled_and_what_it_did_not_finish_runs_realtime(
    api: httpx.Client, fake_upstream: FakeUpstream, marker: str, django_db_blocker: Any
) -> None:
    """gpt-batch-slow's batches take 10 s an item: four items, 40 s, past the 40-s deadline less
    the 5-s reserve. Once the first item is done its progress says so: the batch is cancelled,
    the item it finished is recorded (batch prices), and the others run realtime in time."""
    ids = [_send(api, "gpt-batch-slow", f"{marker} {i}", priority="batch", max_wait=40) for i in range(5)]
    records = _ended(api, ids)
    assert {r["status"] for r in records} == {"succeeded"}, records
    served = Counter(r["tier"]["served"] for r in records)
    assert served["batch"] >= 1 and served["standard"] >= 2, served
    assert set(_processed(fake_upstream, ids).values()) == {1}
    with django_db_blocker.unblock():
        batches = list(ProviderBatch.objects.filter(id__in={r["tier"]["batch"] for r in records} - {None}))
    assert {(b.state, b.upstream_status) for b in batches} == {(BatchState.ENDED, "cancelled")}
    assert sum(b.rerun for b in batches) >= 2 and sum(b.succeeded for b in batches) == served["batch"]
    for record in records:
        if record["tier"]["served"] == "standard" and record["tier"]["batch"] is not None:
            assert record["attempts"] == 2  # its batch attempt, then realtime


def test_anthropic_message_batches_and_an_items_own_error(
    api: httpx.Client, fake_upstream: FakeUpstream, marker: str
) -> None:
    ids = [_send(api, "claude-batch", f"{marker} {i}", priority="batch") for i in range(4)]
    bad = _send(api, "claude-batch", f"{marker} refused", fake={"status": 400}, priority="batch")
    records = {r["id"]: r for r in _ended(api, [*ids, bad])}
    batched = [records[rid] for rid in ids if records[rid]["tier"]["served"] == "batch"]
    assert batched and all(r["status"] == "succeeded" for r in records.values() if r["id"] != bad)
    for record in batched:
        assert record["response"]["type"] == "message"
        assert Decimal(record["cost"]["actual"]) == cost_at(record, BATCH)
    # Its own error fails it with the provider's word, once: neither retried nor run realtime.
    failed = records[bad]
    if failed["tier"]["served"] == "batch":
        assert failed["status"] == "failed" and failed["upstream_status"] == 400
    assert set(_processed(fake_upstream, [*ids, bad]).values()) == {1}


def test_a_model_groups_batch_work_goes_in_its_deployments_provider_batches(
    api: httpx.Client, fake_upstream: FakeUpstream, marker: str
) -> None:
    """gpt-batched: one deployment (gpt-batch-grouped) offering the batch tier; requests sent to
    the group's name wait in the group's line, and leave it for that deployment's batches."""
    ids = [_send(api, "gpt-batched", f"{marker} {i}", priority="batch") for i in range(5)]
    records = _ended(api, ids)
    assert {r["status"] for r in records} == {"succeeded"}
    batched = [r for r in records if r["tier"]["served"] == "batch"]
    assert len(batched) >= 3, [r["tier"] for r in records]
    assert {(r["group"], r["model"]) for r in records} == {("gpt-batched", "gpt-batch-grouped")}
    assert all(Decimal(r["cost"]["actual"]) == cost_at(r, BATCH) for r in batched)
    assert set(_processed(fake_upstream, ids).values()) == {1}
    sent = [
        item for b in fake_upstream.batches.batches.values() for _, item in b.items if marker in str(item)
    ]
    assert sent and {item["model"] for item in sent} == {"gpt-batch-grouped"}


def test_a_request_asking_for_a_batch_waits_for_one_in_no_line(
    api: httpx.Client, fake_upstream: FakeUpstream, marker: str
) -> None:
    """`tier: batch`: sent in a provider batch even when the realtime line is idle (claude-batch's
    was not used for a while: it would take the first at once); one whose deadline leaves no
    time for a batch runs realtime. A model without the tier refuses it before queueing it."""
    ids = [_send(api, "claude-batch", f"{marker} {i}", tier="batch") for i in range(2)]
    hurried = _send(api, "claude-batch", f"{marker} hurried", tier="batch", max_wait=3)
    records = {r["id"]: r for r in _ended(api, [*ids, hurried])}
    assert {r["status"] for r in records.values()} == {"succeeded"}
    for rid in ids:
        assert records[rid]["tier"]["served"] == "batch" and records[rid]["tier"]["asked"] == "batch"
        assert Decimal(records[rid]["cost"]["actual"]) == cost_at(records[rid], BATCH)
    assert records[hurried]["tier"]["served"] == "standard"
    assert set(_processed(fake_upstream, [*ids, hurried]).values()) == {1}
    refused = api.post(
        "/completions",
        json={
            "model": "gpt-test",
            "payload": {"messages": [{"role": "user", "content": "x"}]},
            "tier": "batch",
        },
    )
    assert refused.status_code == 400 and "offers no batch tier" in refused.text


def test_a_worker_killed_while_its_provider_batch_is_open_loses_nothing(
    api: httpx.Client, fake_upstream: FakeUpstream, marker: str, worker: Any, django_db_blocker: Any
) -> None:
    """The only worker is SIGKILLed while a provider batch of its requests is open (taking 8 s,
    longer than a lease): a worker started again polls it on, records each result once, and
    runs nothing twice."""
    from tests.conftest import _worker_alive

    tiers = fake_upstream.batches.tiers
    was = tiers["gpt-batch-slow"]
    tiers["gpt-batch-slow"] = BatchTier(seconds=8.0)
    try:
        ids = [_send(api, "gpt-batch-slow", f"{marker} {i}", priority="batch") for i in range(4)]

        def open_batch() -> bool:
            with django_db_blocker.unblock():
                return ProviderBatch.objects.filter(requests__id__in=ids, state=BatchState.OPEN).exists()

        wait_until(open_batch, 30, "a provider batch of them to be open")
        worker.stop(sig=signal.SIGKILL)
        worker.start(ready=_worker_alive)
        records = _ended(api, ids)
    finally:
        tiers["gpt-batch-slow"] = was
    assert {r["status"] for r in records} == {"succeeded"}
    assert sum(r["tier"]["served"] == "batch" for r in records) >= 2
    assert set(_processed(fake_upstream, ids).values()) == {1}
