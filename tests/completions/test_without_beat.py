"""Nothing that is due waits for beat: with beat stopped, requests whose wait in line is several
times a wake-up's longest countdown start when they are due, each wake-up publishing the next."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import pytest
from django.conf import settings

pytestmark = pytest.mark.timeout(120)


def test_waits_longer_than_a_countdown_are_served_on_time_while_beat_is_down(
    api: httpx.Client, beat: Any, marker: str
) -> None:
    # mock-chain grants one request per 10 s; a wake-up's countdown is at most 2 s here.
    assert settings.BALANCER_MAX_COUNTDOWN_SECONDS < 10
    beat.stop()
    try:
        body = {"provider": "mock", "model": "mock-chain", "payload": {"messages": [], "max_tokens": 2}}
        ids = [api.post("/completions", json={**body, "wait": 0}).json()["id"] for _ in range(3)]
        done = [api.get(f"/completions/{rid}", params={"wait": 60}).json() for rid in ids]
    finally:
        beat.start()
    assert [d["status"] for d in done] == ["succeeded"] * 3
    started = [datetime.fromisoformat(d["started_at"]) for d in done]
    gaps = [(b - a).total_seconds() for a, b in zip(started, started[1:], strict=False)]
    # Each starts when the bucket holds it again (10 s, less the margins), not when some tend
    # noticed a wake-up overdue (never, while beat is down).
    assert all(9 <= gap <= 11 for gap in gaps), gaps
