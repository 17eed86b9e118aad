"""A model disabled while its line is full, with the live web and worker processes: by default
its requests drain — served to the last, through a restart of the workers — and with "cancel"
they end cancelled with the reason. Nothing is stranded."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from completions.models import ServedModel
from completions.services import served_model_disable
from tests.conftest import _worker_alive
from tests.live import wait_until

pytestmark = pytest.mark.timeout(180)
TERMINAL = {"succeeded", "failed", "cancelled", "expired"}


def submit(api: httpx.Client, model: str, n: int, marker: str) -> list[str]:
    body = {"messages": [{"role": "user", "content": marker}], "max_tokens": 2}
    return [
        api.post(
            "/completions", json={"provider": "mock", "model": model, "payload": body, "wait": 0}
        ).json()["id"]
        for _ in range(n)
    ]


def statuses(api: httpx.Client, ids: list[str]) -> list[str]:
    return [api.get(f"/completions/{rid}").json()["status"] for rid in ids]


def test_a_model_disabled_with_100_queued_drains_them_through_a_worker_restart(
    api: httpx.Client, worker: Any, django_db_blocker: Any, marker: str
) -> None:
    ids = submit(api, "mock-drain", 100, marker)  # ten a second: most still wait
    with django_db_blocker.unblock():
        served = ServedModel.objects.select_related("provider").get(provider__name="mock", name="mock-drain")
        try:
            assert served_model_disable(served_model=served, waiting="drain") == 0
            worker.stop()  # a restart: the new worker reads which queues to consume from the registry
            worker.start(ready=_worker_alive)
            # New requests are refused at once...
            refused = api.post(
                "/completions", json={"provider": "mock", "model": "mock-drain", "payload": {"messages": []}}
            )
            assert refused.status_code == 400
            # ...and every one accepted before is served.
            wait_until(
                lambda: set(statuses(api, ids)) <= TERMINAL, 90, "the disabled model's line to drain", 1
            )
            assert statuses(api, ids) == ["succeeded"] * 100
            wait_until(
                lambda: not ServedModel.objects.get(pk=served.pk).draining,
                30,
                "the tend to see it drained",
                0.5,
            )
        finally:
            served.enabled = True
            served.save()


def test_a_model_disabled_with_cancel_ends_its_waiting_requests_with_the_reason(
    api: httpx.Client, worker: Any, django_db_blocker: Any, marker: str
) -> None:
    ids = submit(api, "mock-cancel", 60, marker)
    with django_db_blocker.unblock():
        served = ServedModel.objects.select_related("provider").get(provider__name="mock", name="mock-cancel")
        try:
            cancelled = served_model_disable(served_model=served, waiting="cancel", by="by a test")
        finally:
            served.enabled = True
            served.save()
    assert cancelled > 0
    wait_until(lambda: set(statuses(api, ids)) <= TERMINAL, 30, "every request to end", 0.5)
    records = [api.get(f"/completions/{rid}").json() for rid in ids]
    ended = [r for r in records if r["status"] == "cancelled"]
    assert len(ended) == cancelled
    assert all("mock/mock-cancel was disabled (by a test)" in r["error"]["message"] for r in ended)
    assert {r["status"] for r in records} <= {"succeeded", "cancelled"}
    assert api.get("/queues/mock/mock-cancel").json()["waiting"] == 0
