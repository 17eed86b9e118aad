"""Money: prices, a request's cost, and budgets reserved and settled in Redis (completions.spend,
ratelimit/lua/_budget.lua), against the real Redis and the test database."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from balancer_project.redis_conn import get_redis
from completions.config import ConfigError, config_apply
from completions.models import ApiKey, Budget, BudgetPeriod, CompletionRequest, CompletionStatus
from completions.services import api_key_create, completion_request_cancel, completion_request_create
from completions.spend import (
    BudgetExceeded,
    Prices,
    current_period,
    period_bounds,
    period_spend,
    prices_of,
)
from ratelimit import limiter
from ratelimit.limiter import BudgetRefused, Budgets, BudgetUnknown


def test_a_call_costs_its_input_cached_input_and_output_rounded_up_to_the_micro_dollar() -> None:
    prices = Prices(input=Decimal("2.50"), cached_input=Decimal("1.25"), output=Decimal("10"))
    # 1,000 input tokens of which 400 cached, 100 output: 600 × 2.5 + 400 × 1.25 + 100 × 10 per 1M.
    assert prices.cost(1000, 100, 400) == Decimal("0.003000")
    # A third of a micro-dollar is charged as one: the budget never under-counts.
    assert Prices(Decimal("0.333333"), Decimal(0), Decimal(0)).cost(1, 0) == Decimal("0.000001")
    # Cached tokens never exceed the input.
    assert prices.cost(10, 0, 50) == Decimal("0.000013")


def test_periods_are_utc_days_months_and_hours() -> None:
    at = datetime(2026, 12, 31, 23, 30, tzinfo=UTC)
    assert period_bounds(Budget(period=BudgetPeriod.DAILY), at) == (
        datetime(2026, 12, 31, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert period_bounds(Budget(period=BudgetPeriod.MONTHLY), at) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert period_bounds(Budget(period=BudgetPeriod.HOURS, hours=6), at) == (
        datetime(2026, 12, 31, 18, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )


@pytest.fixture
def budget_key() -> Iterator[str]:
    key = limiter.budget_key("key:test-budget", 1)
    get_redis().delete(key)
    yield key
    get_redis().delete(key)


def test_concurrent_reservations_never_pass_the_budget_together(budget_key: str) -> None:
    """200 threads reserve at once from a budget that holds 50 of them: exactly 50 get it."""
    with pytest.raises(BudgetUnknown):
        limiter.budget_reserve("r-0", Budgets([budget_key], [50_000], [600], 1_000))
    assert limiter.budget_init(budget_key, spent=0, reserved={}, ttl=600)
    assert not limiter.budget_init(budget_key, spent=5, reserved={}, ttl=600)  # built already
    taken: list[str] = []
    refused: list[int] = []
    barrier = threading.Barrier(200)

    def reserve(i: int) -> None:
        barrier.wait()
        try:
            limiter.budget_reserve(f"r-{i}", Budgets([budget_key], [50_000], [600], 1_000))
            taken.append(f"r-{i}")
        except BudgetRefused as exc:
            refused.append(exc.left)

    threads = [threading.Thread(target=reserve, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == 50 and len(refused) == 150 and set(refused) == {0}
    # A delivery repeated takes nothing more.
    limiter.budget_reserve(taken[0], Budgets([budget_key], [50_000], [600], 1_000))
    (figures,) = limiter.budget_read([budget_key])
    assert (figures.spent, figures.reserved, figures.open) == (0, 50_000, 50)
    # Settled for less, each gives back the rest, once.
    pipe = get_redis().pipeline(transaction=False)
    pending = [limiter.budget_settle_in(pipe, rid, [budget_key], 400) for rid in taken]
    pending.append(limiter.budget_settle_in(pipe, taken[0], [budget_key], 400))
    replies = pipe.execute()
    assert [p.result(replies) for p in pending].count(True) == 50
    (figures,) = limiter.budget_read([budget_key])
    assert (figures.spent, figures.reserved, figures.open) == (20_000, 0, 0)


# -- through the services ----------------------------------------------------------------------


def _registry(budget: Any, group_budget: Any = None) -> dict[str, Any]:
    return {
        "providers": [
            {
                "name": "unit",
                "kind": "mock",
                "models": [
                    # No quota: its requests join no line, and reserve in a step of their own.
                    {"name": "priced", "prices": {"input": "0", "output": "100"}},
                    {
                        "name": "priced-grouped",
                        "group": "priced-group",
                        "prices": {"input": "0", "output": "100"},
                    },
                    {
                        "name": "priced-limited",
                        "quota": {"requests_per_minute": 600},
                        "prices": {"input": "0", "output": "100"},
                    },
                ],
            }
        ],
        "keys": [{"name": "spender", "budget": budget}],
        "groups": [{"name": "priced-group", "budget": group_budget}],
    }


@pytest.fixture
def spender() -> Iterator[ApiKey]:
    key, raw = api_key_create(name="spender")
    key.raw_key = raw
    config_apply(_registry({"limit": "0.03", "period": "daily"}))
    yield key
    for budget in Budget.objects.all():
        get_redis().delete(current_period(budget).key)
    for line in ("unit/priced-limited", f"key:{key.pk}", "group:priced-group"):
        limiter.reset(line)


def _ask(key: ApiKey, model: str, **kwargs: Any) -> CompletionRequest:
    from completions.models import ServedModel

    served = ServedModel.objects.get(provider__name="unit", name=model)
    payload = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    return completion_request_create(api_key=key, served_model=served, payload=payload, **kwargs)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("model", ["priced", "priced-limited"])
def test_a_request_over_its_keys_budget_is_refused_and_ends_with_the_reason(
    spender: ApiKey, model: str
) -> None:
    # Each may cost 100 output tokens at $100 per million: $0.01; the budget holds three.
    accepted = [_ask(spender, model) for _ in range(3)]
    assert {r.estimated_cost for r in accepted} == {Decimal("0.010000")}
    with pytest.raises(BudgetExceeded) as refused:
        _ask(spender, model)
    assert "$0.000000 of $0.03 is left" in str(refused.value) and refused.value.retry_after > 0
    failed = CompletionRequest.objects.exclude(id__in=[r.id for r in accepted]).get()
    assert failed.status == CompletionStatus.FAILED and failed.error["type"] == "budget_exceeded"
    assert failed.cost == 0
    period = current_period(Budget.objects.get(api_key=spender))
    assert period_spend(period) == (Decimal(0), Decimal("0.03"))
    # A request cancelled before it ran gives its reservation back: the next one fits.
    assert completion_request_cancel(request=accepted[0])
    assert period_spend(period) == (Decimal(0), Decimal("0.02"))
    _ask(spender, model)


@pytest.mark.django_db(transaction=True)
def test_a_period_redis_lost_is_built_again_from_the_database(spender: ApiKey) -> None:
    from completions.services import completion_request_finish

    first, second = _ask(spender, "priced"), _ask(spender, "priced")
    completion_request_finish(
        request_id=first.id,
        from_status=CompletionStatus.QUEUED,
        status=CompletionStatus.SUCCEEDED,
        cost=Decimal("0.004"),
    )
    period = current_period(Budget.objects.get(api_key=spender))
    assert period_spend(period) == (Decimal("0.004"), Decimal("0.01"))
    get_redis().delete(period.key)  # Redis restarted empty
    # Read before any request: from the database.
    assert period_spend(period) == (Decimal("0.004"), Decimal("0.01"))
    # The next request builds it, then reserves: $0.004 + $0.01 + $0.01 of $0.03.
    _ask(spender, "priced")
    assert period_spend(period) == (Decimal("0.004"), Decimal("0.02"))
    with pytest.raises(BudgetExceeded):
        _ask(spender, "priced")
    # The open request's reservation came back with the rebuild: its settlement still counts once.
    completion_request_finish(
        request_id=second.id,
        from_status=CompletionStatus.QUEUED,
        status=CompletionStatus.SUCCEEDED,
        cost=Decimal("0.002"),
    )
    assert period_spend(period) == (Decimal("0.006"), Decimal("0.01"))


@pytest.mark.django_db(transaction=True)
def test_the_sweep_settles_a_reservation_its_process_left_open(spender: ApiKey) -> None:
    from completions.spend import budgets_reconcile

    request = _ask(spender, "priced")
    # Ended in the database, its settlement lost with its process.
    CompletionRequest.objects.filter(id=request.id).update(
        status=CompletionStatus.SUCCEEDED, cost=Decimal("0.001")
    )
    period = current_period(Budget.objects.get(api_key=spender))
    assert period_spend(period) == (Decimal(0), Decimal("0.01"))
    assert budgets_reconcile() == 1
    assert period_spend(period) == (Decimal("0.001"), Decimal(0))
    assert budgets_reconcile() == 0


@pytest.mark.django_db
def test_prices_and_budgets_in_the_registry_file_are_decimals_checked_with_clear_messages() -> None:
    api_key_create(name="spender")
    config_apply(_registry(None))
    from completions.models import ServedModel

    served = ServedModel.objects.get(provider__name="unit", name="priced")
    assert prices_of(served) == Prices(Decimal(0), Decimal(0), Decimal(100))
    for prices, message in (
        ({"input": "-1", "output": "1"}, "cannot be negative"),
        ({"input": "5000", "output": "1"}, "surely a typo"),
        ({"input": True, "output": "1"}, "must be a number"),
        ({"input": "1"}, "needs output"),
        ({"input": "1", "output": "1", "flex": {"input": "0.5"}}, "needs output"),
        ({"input": "1", "output": "1", "spot": {}}, "unknown field"),
    ):
        registry = _registry(None)
        registry["providers"][0]["models"][0]["prices"] = prices
        with pytest.raises(ConfigError, match=message):
            config_apply(registry)
    with pytest.raises(ConfigError, match="needs the number of hours"):
        config_apply(_registry({"limit": "1", "period": "hours"}))
    with pytest.raises(ConfigError, match="below the hard maximum"):
        config_apply(_registry({"limit": "1", "warn_at": "2"}))
    registry = _registry(None)
    registry["providers"][0]["models"][0]["prices"] = None
    config_apply(registry)
    assert prices_of(served) is None


@pytest.mark.django_db(transaction=True)
def test_a_key_reads_its_own_spend_and_its_budgets_period(spender: ApiKey) -> None:
    from django.test import Client

    from completions.services import completion_request_finish

    done, waiting = _ask(spender, "priced"), _ask(spender, "priced-limited")
    completion_request_finish(
        request_id=done.id,
        from_status=CompletionStatus.QUEUED,
        status=CompletionStatus.SUCCEEDED,
        cost=Decimal("0.004"),
    )
    other, other_raw = api_key_create(name="other")
    _ask(other, "priced")
    client = Client()
    spend = client.get("/api/v1/spend", HTTP_AUTHORIZATION=f"Bearer {spender.raw_key}").json()
    assert spend["currency"] == "USD" and spend["total"] == "0.004000"
    assert spend["budget"]["limit"] == "0.03" and spend["budget"]["period"] == "daily"
    assert (spend["budget"]["spent"], spend["budget"]["reserved"], spend["budget"]["left"]) == (
        "0.004000",
        "0.010000",
        "0.016000",
    )
    assert spend["by_model"] == [{"model": "unit/priced", "spent": "0.004000", "requests": 1}]
    assert [d["spent"] for d in spend["by_day"]] == ["0.004000"]
    # Another key sees only its own: nothing spent, no budget.
    theirs = client.get("/api/v1/spend", HTTP_AUTHORIZATION=f"Bearer {other_raw}").json()
    assert theirs["total"] == "0.000000" and theirs["budget"] is None and theirs["by_model"] == []
    assert client.get("/api/v1/spend?days=0", HTTP_AUTHORIZATION=f"Bearer {other_raw}").status_code == 400
    assert waiting.status == CompletionStatus.QUEUED


@pytest.mark.django_db(transaction=True)
def test_spending_past_the_soft_threshold_is_logged_once_per_period(
    spender: ApiKey, caplog: pytest.LogCaptureFixture
) -> None:
    from completions.services import completion_request_finish
    from completions.spend import WARNED_PREFIX, budgets_warn

    budget = Budget.objects.get(api_key=spender)
    budget.warn_at = Decimal("0.01")
    budget.save()
    period = current_period(budget)
    get_redis().delete(f"{WARNED_PREFIX}{period.token}")
    assert budgets_warn() == 0
    done = _ask(spender, "priced")
    completion_request_finish(
        request_id=done.id,
        from_status=CompletionStatus.QUEUED,
        status=CompletionStatus.SUCCEEDED,
        cost=Decimal("0.01"),
    )
    with caplog.at_level("WARNING", logger="completions.spend"):
        assert budgets_warn() == 1
        assert budgets_warn() == 0
    assert "passed its soft threshold: $0.010000 spent of $0.03" in caplog.text
    get_redis().delete(f"{WARNED_PREFIX}{period.token}")


@pytest.mark.django_db(transaction=True)
def test_metrics_export_spend_per_model_and_what_each_budget_has_left(spender: ApiKey) -> None:
    from django.test import Client

    from completions.metrics import record_attempt

    _ask(spender, "priced")  # reserves $0.01 of $0.03
    record_attempt(
        model="unit/priced",
        status=200,
        upstream_seconds=0.1,
        queue_seconds=None,
        input_tokens=1,
        output_tokens=2,
        retried=False,
        cost=Decimal("0.25"),
    )
    text = Client().get("/metrics").content.decode()
    assert f'balancer_budget_remaining_usd{{budget="key:{spender.pk}",period="daily"}} 0.02' in text
    spent = [
        line for line in text.splitlines() if line.startswith('balancer_spend_usd_total{model="unit/priced"}')
    ]
    assert spent and float(spent[0].split()[-1]) >= 0.25


@pytest.mark.django_db(transaction=True)
def test_a_batch_request_over_a_queuing_budget_waits_for_the_next_period_in_its_own_place(
    spender: ApiKey,
) -> None:
    from completions.selectors import completion_request_place
    from completions.services import budget_waits_deliver

    spender.max_priority = "interactive"
    spender.save()
    config_apply(_registry({"limit": "0.02", "period": "hours", "hours": 1, "when_spent": "queue_batch"}))
    budget = Budget.objects.get(api_key=spender)
    period = current_period(budget)
    spent_by = [_ask(spender, "priced-limited"), _ask(spender, "priced-limited")]  # the budget is spent
    # Not batch: refused. Batch with a deadline before the reset: refused.
    with pytest.raises(BudgetExceeded):
        _ask(spender, "priced-limited")
    with pytest.raises(BudgetExceeded):
        _ask(spender, "priced-limited", priority="batch", max_wait=1)
    # Batch with no deadline (and one past the reset): they wait, in no line, in arrival order.
    first = _ask(spender, "priced-limited", priority="batch")
    second = _ask(spender, "priced-limited", priority="batch", max_wait=7200)
    for waiting in (first, second):
        waiting.refresh_from_db()
        assert waiting.status == CompletionStatus.QUEUED and waiting.budget_wait_until == period.reset
        assert completion_request_place(request=waiting) == {
            "line": "budget",
            "position": None,
            "estimated_wait_seconds": pytest.approx(
                (period.reset - waiting.created_at).total_seconds(), abs=5
            ),
            "estimated_start": period.reset.isoformat().replace("+00:00", "Z"),
        }
    assert budget_waits_deliver() == 0  # not yet
    # The period resets (here: it is made to have ended, and the next has room for one).
    for earlier in spent_by:
        completion_request_cancel(request=earlier)
    CompletionRequest.objects.filter(budget_wait_until__isnull=False).update(budget_wait_until=timezone.now())
    get_redis().delete(period.key)
    config_apply(_registry({"limit": "0.01", "period": "hours", "hours": 1, "when_spent": "queue_batch"}))
    assert budget_waits_deliver() == 1
    first.refresh_from_db(), second.refresh_from_db()
    # The first to arrive went first; the second waits for the period after.
    assert first.budget_wait_until is None and limiter.in_line("unit/priced-limited", str(first.id))
    assert second.status == CompletionStatus.QUEUED and second.budget_wait_until is not None
    assert second.budget_wait_until > timezone.now()


@pytest.mark.django_db(transaction=True)
def test_the_first_request_of_a_period_is_checked_like_the_others(spender: ApiKey) -> None:
    """It finds the period missing and builds it: it must not count itself as reserved already."""
    config_apply(_registry({"limit": "0", "period": "daily"}))  # less than one request's worst case
    get_redis().delete(current_period(Budget.objects.get(api_key=spender)).key)
    for model in ("priced", "priced-limited"):
        with pytest.raises(BudgetExceeded):
            _ask(spender, model)


@pytest.mark.django_db(transaction=True)
def test_a_model_groups_budget_holds_for_every_key_that_sends_to_it(spender: ApiKey) -> None:
    from completions.selectors import model_group_get

    config_apply(_registry(None, {"limit": "0.02", "period": "monthly"}))
    other, _ = api_key_create(name="other")
    group = model_group_get(name="priced-group")
    assert group is not None
    _ask(spender, "priced-grouped", group=group)
    _ask(other, "priced-grouped", group=group)
    with pytest.raises(BudgetExceeded, match="budget of model group priced-group is spent"):
        _ask(spender, "priced-grouped", group=group)
    assert period_spend(current_period(Budget.objects.get(group=group))) == (Decimal(0), Decimal("0.02"))
