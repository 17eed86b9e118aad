"""The outbox: a request accepted while Redis was away takes its place by arrival."""

from __future__ import annotations

from typing import Any

import pytest

from completions.config import config_apply
from completions.models import CompletionRequest
from completions.services import api_key_create

pytestmark = pytest.mark.django_db


# -- the outbox --------------------------------------------------------------------------------


def test_a_request_from_the_outbox_takes_its_place_by_arrival_ahead_of_later_ones() -> None:
    from completions.maintenance import completion_requests_redeliver
    from completions.services import completion_request_deliver
    from ratelimit import limiter

    config_apply(
        {
            "providers": [
                {
                    "name": "unit",
                    "kind": "mock",
                    "models": [
                        {"name": "outbox-order", "quota": {"requests_per_minute": 600, "burst_seconds": 1}}
                    ],
                }
            ]
        }
    )
    key, _ = api_key_create(name="outbox")
    line = "unit/outbox-order"
    limiter.reset(line)

    def accept(**fields: Any) -> CompletionRequest:
        return CompletionRequest.objects.create(
            api_key=key, provider="unit", model="outbox-order", rate_limited=True, payload={}, **fields
        )

    try:
        # Accepted while Redis was unreachable: it waits in the outbox.
        early = accept(undelivered=True)
        # Redis is back; a later request goes straight into line, before the tend runs.
        later = accept()
        completion_request_deliver(request=later, waits_for_key=False)
        assert completion_requests_redeliver() == 1
        # The early one stands ahead of the later one: the line is ordered by arrival.
        heads = [limiter.acquire(line, None, lease_seconds=60) for _ in range(2)]
        assert [(g.outcome, g.request_id) for g in heads] == [("go", str(early.id)), ("go", str(later.id))]
    finally:
        limiter.reset(line)
