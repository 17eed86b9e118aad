"""Budgets under concurrency, through the whole stack: two web processes, two workers, the
official SDK, and a fake upstream that counts every call."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import openai
import pytest

from completions.models import Budget, CompletionRequest, CompletionStatus
from completions.selectors import api_key_get_by_raw
from completions.spend import current_period, period_spend
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.timeout(240)


def test_200_concurrent_requests_never_spend_past_their_keys_budget(
    web: Any,
    worker: Any,
    start_web: Any,
    start_worker: Any,
    make_key: Any,
    django_db_blocker: Any,
    fake_upstream: FakeUpstream,
    marker: str,
) -> None:
    """gpt-priced: 10 output tokens (max_tokens, and what the upstream answers) at $100 per
    million, $0.001 a request; the key's budget, $0.05, covers 50 of them."""
    raw = make_key("budgeted")
    with django_db_blocker.unblock():
        key = api_key_get_by_raw(raw_key=raw)
        assert key is not None
        budget = Budget.objects.create(api_key=key, limit=Decimal("0.05"), period="daily")
    webs = [web, start_web()]
    start_worker()

    async def one(i: int) -> tuple[int, str, str | None]:
        client = openai.AsyncOpenAI(base_url=f"{webs[i % 2].url}/v1", api_key=raw, max_retries=0, timeout=120)
        try:
            answer = await client.chat.completions.with_raw_response.create(
                model="gpt-priced",
                messages=[{"role": "user", "content": f"{marker} {i}"}],
                max_tokens=10,
            )
            return 200, "", answer.headers.get("x-balancer-cost")
        except openai.APIStatusError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            assert exc.response.headers.get("x-should-retry") == "false"
            assert int(exc.response.headers["retry-after"]) > 0
            return exc.status_code, str(body.get("type")), body.get("reset_at")
        finally:
            await client.close()

    async def all_at_once() -> list[tuple[int, str, str | None]]:
        return await asyncio.gather(*(one(i) for i in range(200)))

    answers = asyncio.run(all_at_once())
    succeeded = [a for a in answers if a[0] == 200]
    refused = [a for a in answers if a[0] == 429]
    assert len(succeeded) + len(refused) == 200, {a[:2] for a in answers}
    assert {a[1] for a in refused} == {"budget_exceeded"} and all(a[2] for a in refused)
    assert {a[2] for a in succeeded} == {"0.001000"}
    # The budget holds: what was paid upstream is what was settled, and no more than the budget.
    calls = len(fake_upstream.received(marker))
    assert calls == len(succeeded) == 50
    with django_db_blocker.unblock():
        rows = CompletionRequest.objects.filter(api_key=key)
        assert rows.filter(status=CompletionStatus.SUCCEEDED).count() == 50
        assert rows.filter(status=CompletionStatus.FAILED, error__type="budget_exceeded").count() == 150
        spent, reserved = period_spend(current_period(budget))
    assert spent == Decimal("0.05") and reserved == 0


def test_a_stream_ends_with_what_it_cost_where_a_plain_answer_has_its_header(
    web: Any, worker: Any, make_key: Any, marker: str
) -> None:
    import httpx

    raw = make_key("streamed-cost")
    body = {
        "model": "gpt-priced",
        "messages": [{"role": "user", "content": marker}],
        "max_tokens": 10,
        "stream": True,
    }
    text = httpx.post(
        f"{web.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {raw}"}, timeout=60
    ).text
    assert "data: [DONE]" in text and text.rstrip().endswith(": x-balancer-cost 0.001000")
    # The SDK reads it as it reads any stream: comment lines are not events.
    client = openai.OpenAI(base_url=f"{web.url}/v1", api_key=raw, max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="gpt-priced", messages=[{"role": "user", "content": marker}], max_tokens=10, stream=True
        )
    )
    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
