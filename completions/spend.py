"""Money: what a deployment costs, what a request cost, and budgets that cannot be overspent.

Prices are per deployment and tier (DeploymentPrice), US dollars per million tokens. A request
records its worst case at admission (`estimated_cost`: its input estimate and output cap at the
dearest deployment it may go to) and, when it ends, what it cost (`cost`) at the prices its
attempt started with (`prices`), from the usage the provider reported, cached input included.
Amounts are Decimal, quantized up to the micro-dollar; Redis keeps integer micro-dollars.

Budgets (Budget: a client key's, or a model group's) hold under any concurrency because the
check and the reservation are one Redis step: the request's first entry into a line
(ratelimit/lua/enqueue.lua), or a step of their own for one that joins no line. The row says
which budget periods it reserved in (`budgets`), and whichever way it ends — finished, cancelled,
expired — its reservation is replaced by its cost in the same round trip as its announcement
(completion_request_finish). The sweep settles any left open by a process that died in between
(`budgets_reconcile`). A period Redis does not hold — the first request of a period, or Redis
lost its data — is built from the database first (`budget_build`): what the period's ended
requests cost and what its open ones reserved.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_UP, Decimal
from typing import Any, TypeVar

from django.db.models import QuerySet, Sum
from django.utils import timezone

from balancer_project.redis_conn import get_redis
from completions.models import (
    TERMINAL_STATUSES,
    ApiKey,
    Budget,
    BudgetPeriod,
    CompletionRequest,
    DeploymentPrice,
    Priority,
    ServedModel,
    Tier,
    WhenSpent,
)
from completions.registry_cache import registry_cache
from ratelimit import limiter
from ratelimit.limiter import BudgetRefused, Budgets, BudgetUnknown
from ratelimit.names import group_line, key_line

logger = logging.getLogger(__name__)
T = TypeVar("T")

MICRO = Decimal("0.000001")
MILLION = Decimal(1_000_000)
ZERO = Decimal(0)
# A budget period's hash outlives the period by this much: requests admitted in it may end later.
KEEP_AFTER_RESET = timedelta(days=7)


def to_micro(amount: Decimal) -> int:
    """Integer micro-dollars, rounded up (what Lua keeps)."""
    return int((amount / MICRO).to_integral_value(rounding=ROUND_UP))


def from_micro(amount: int) -> Decimal:
    return (Decimal(amount) * MICRO).quantize(MICRO)


@dataclass(frozen=True)
class Prices:
    """US dollars per million tokens."""

    input: Decimal
    cached_input: Decimal
    output: Decimal

    def cost(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> Decimal:
        """What a call costs: its input (of which `cached_input_tokens` read from the provider's
        cache) and its output, rounded up to the micro-dollar."""
        cached = min(max(cached_input_tokens, 0), input_tokens)
        total = (
            (input_tokens - cached) * self.input + cached * self.cached_input + output_tokens * self.output
        )
        return (total / MILLION).quantize(MICRO, rounding=ROUND_UP)

    def as_json(self) -> dict[str, str]:
        return {"input": str(self.input), "cached_input": str(self.cached_input), "output": str(self.output)}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Prices | None:
        if not data:
            return None
        return cls(Decimal(data["input"]), Decimal(data["cached_input"]), Decimal(data["output"]))


def prices_of(served_model: ServedModel, tier: str = Tier.STANDARD) -> Prices | None:
    """A deployment's prices in `tier` (None: it has none, and costs nothing)."""

    def load() -> Prices | None:
        row = DeploymentPrice.objects.filter(served_model_id=served_model.pk, tier=tier).first()
        if row is None:
            return None
        cached = row.input if row.cached_input is None else row.cached_input
        return Prices(row.input, cached, row.output)

    return registry_cache.get(("prices", served_model.pk, tier), load, keep_empty=True)


def worst_case(deployments: Iterable[ServedModel], input_tokens: int, output_tokens: int) -> Decimal:
    """The most a request may cost: its input estimate and output cap at the dearest of the
    deployments it may go to."""
    costs = [p.cost(input_tokens, output_tokens) for d in deployments if (p := prices_of(d)) is not None]
    return max(costs, default=ZERO)


# -- budgets -----------------------------------------------------------------------------------


def period_bounds(budget: Budget, at: datetime) -> tuple[datetime, datetime]:
    """The period of `budget` that `at` falls in: (start, reset), UTC."""
    at = at.astimezone(UTC)
    if budget.period == BudgetPeriod.DAILY:
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    if budget.period == BudgetPeriod.MONTHLY:
        start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        return start, (start + timedelta(days=32)).replace(day=1)
    length = int(budget.hours or 1) * 3600
    begun = math.floor(at.timestamp() / length) * length
    start = datetime.fromtimestamp(begun, UTC)
    return start, start + timedelta(seconds=length)


def budget_scope(budget: Budget) -> str:
    """Its Redis scope: the line of its key or group, so it shares their hash tag."""
    if budget.api_key_id is not None:
        return key_line(budget.api_key_id)
    assert budget.group is not None
    return group_line(budget.group.name)


@dataclass(frozen=True)
class Period:
    """One budget's current period, as a request reserves in it."""

    budget: Budget
    scope: str
    start: datetime
    reset: datetime

    @property
    def token(self) -> str:
        """How a request's row names it (`budgets`, joined by '|')."""
        return f"{self.scope}@{int(self.start.timestamp())}"

    @property
    def key(self) -> str:
        return limiter.budget_key(self.scope, int(self.start.timestamp()))

    @property
    def ttl(self) -> int:
        return max(int((self.reset + KEEP_AFTER_RESET - timezone.now()).total_seconds()), 60)


def key_budget(api_key: ApiKey) -> Budget | None:
    return registry_cache.get(
        ("budget", "key", api_key.pk),
        lambda: Budget.objects.filter(api_key_id=api_key.pk).first(),
        keep_empty=True,
    )


def group_budget(group: str) -> Budget | None:
    return registry_cache.get(
        ("budget", "group", group),
        lambda: Budget.objects.select_related("group").filter(group__name=group).first(),
        keep_empty=True,
    )


def budgets_of(*, api_key: ApiKey, group: str = "") -> list[Budget]:
    """The budgets a request of `api_key` to `group` ("" for none) falls under."""
    found = [key_budget(api_key), group_budget(group) if group else None]
    return [b for b in found if b is not None]


def periods_now(budgets: list[Budget], at: datetime | None = None) -> list[Period]:
    at = at or timezone.now()
    out = []
    for budget in budgets:
        start, reset = period_bounds(budget, at)
        out.append(Period(budget, budget_scope(budget), start, reset))
    return out


def tokens_of(periods: list[Period]) -> str:
    """A row's `budgets`: its periods' tokens between '|' ("" for none), so a token is found by
    a LIKE on "|token|" whatever the names around it."""
    return f"|{'|'.join(p.token for p in periods)}|" if periods else ""


def keys_of(budgets: str) -> list[str]:
    """The Redis keys of the budget periods a row names."""
    out = []
    for token in filter(None, budgets.split("|")):
        scope, _, start = token.rpartition("@")
        out.append(limiter.budget_key(scope, int(start)))
    return out


class BudgetExceeded(Exception):
    """A request's worst case does not fit what is left of a budget until `reset`."""

    def __init__(self, period: Period, left: Decimal, needed: Decimal) -> None:
        owner = (
            "this API key" if period.budget.api_key_id is not None else f"model group {period.budget.group}"
        )
        super().__init__(
            f"The budget of {owner} is spent: ${max(left, ZERO)} of ${period.budget.limit} is left for this "
            f"{period.budget.period_label} period, and this request may cost up to ${needed}. It resets at "
            f"{period.reset.isoformat().replace('+00:00', 'Z')} (UTC)."
        )
        self.period, self.left, self.needed = period, left, needed

    @property
    def reset_at(self) -> str:
        return self.period.reset.isoformat().replace("+00:00", "Z")

    @property
    def retry_after(self) -> int:
        return max(math.ceil((self.period.reset - timezone.now()).total_seconds()), 1)


def may_wait_for_reset(request: CompletionRequest, refused: BudgetExceeded) -> bool:
    """Whether a request its budget refused waits for the period's reset instead: a batch-class
    one, under a budget that queues those, whose deadline (none: any) reaches past the reset."""
    if request.priority != Priority.BATCH or refused.period.budget.when_spent != WhenSpent.QUEUE_BATCH:
        return False
    if request.max_wait is None:
        return True
    return request.created_at + timedelta(seconds=request.max_wait) > refused.period.reset


def holding(request: CompletionRequest) -> Budgets | None:
    """What a request's first entry reserves (None: it falls under no budget)."""
    if not request.budgets:
        return None
    periods = periods_named(request.budgets)
    return Budgets(
        keys=[p.key for p in periods],
        limits=[to_micro(p.budget.limit) for p in periods],
        ttls=[p.ttl for p in periods],
        amount=to_micro(request.estimated_cost),
    )


def periods_named(budgets: str) -> list[Period]:
    """The periods a row's `budgets` names, with their budgets as they are now (a budget deleted
    since is left out)."""
    out = []
    for token in filter(None, budgets.split("|")):
        scope, _, start_s = token.rpartition("@")
        budget = _budget_of_scope(scope)
        if budget is None:
            continue
        start = datetime.fromtimestamp(int(start_s), UTC)
        _, reset = period_bounds(budget, start)
        out.append(Period(budget, scope, start, reset))
    return out


def _budget_of_scope(scope: str) -> Budget | None:
    def load() -> Budget | None:
        if scope.startswith("key:"):
            return Budget.objects.filter(api_key_id=int(scope.removeprefix("key:"))).first()
        return Budget.objects.select_related("group").filter(group__name=scope.removeprefix("group:")).first()

    return registry_cache.get(("budget", "scope", scope), load, keep_empty=True)


def reserving(request: CompletionRequest, reserve: Callable[[Budgets | None], T]) -> T:
    """Run `reserve(budgets)` — the request's first entry, or its reservation alone — building a
    period Redis does not hold from the database first; returns what it returns. Raises
    BudgetExceeded."""
    budgets = holding(request)
    for _ in range(3):
        try:
            return reserve(budgets)
        except BudgetUnknown as unknown:
            assert budgets is not None
            budget_build(periods_named(request.budgets)[unknown.index], asking=str(request.id))
        except BudgetRefused as refused:
            period = periods_named(request.budgets)[refused.index]
            raise BudgetExceeded(period, from_micro(refused.left), request.estimated_cost) from None
    raise RuntimeError(f"budget periods of request {request.id} could not be built")


def period_rows(period: Period) -> QuerySet[CompletionRequest]:
    """The requests that reserved, or will reserve, in `period`. A key's are read through its
    own index (key, time), so an idle key's period costs nothing to read; a group's by its token
    alone (a request keeps the budgets it was admitted under when it falls back elsewhere)."""
    rows = CompletionRequest.objects.filter(
        created_at__gte=period.start, budgets__contains=f"|{period.token}|"
    )
    return rows.filter(api_key_id=period.budget.api_key_id) if period.budget.api_key_id is not None else rows


def reserving_rows(rows: QuerySet[CompletionRequest]) -> QuerySet[CompletionRequest]:
    """Of `rows`, those holding a reservation: not ended, and delivered — a request in the outbox
    (accepted while Redis was away), or waiting for its budget's next period, has reserved
    nothing, and is checked against the budget when it is delivered, like any other."""
    return rows.exclude(status__in=TERMINAL_STATUSES).filter(
        undelivered=False, budget_wait_until__isnull=True
    )


def budget_build(period: Period, asking: str = "") -> bool:
    """Build a budget period in Redis from the database: what its ended requests cost, and what
    its open ones reserved. `asking`: the request whose first entry found the period missing —
    left out, since it is about to be checked."""
    rows = period_rows(period)
    # Open ones first: one that ends between the two reads is counted twice (its settlement then
    # takes its reservation back), never missed.
    open_rows = reserving_rows(rows).exclude(id=asking) if asking else reserving_rows(rows)
    reserved = {str(i): to_micro(amount) for i, amount in open_rows.values_list("id", "estimated_cost")}
    spent = rows.filter(status__in=TERMINAL_STATUSES).aggregate(total=Sum("cost"))["total"] or ZERO
    built = limiter.budget_init(period.key, spent=to_micro(spent), reserved=reserved, ttl=period.ttl)
    if built:
        logger.info(
            "budget %s built from the database: $%s spent, %d request(s) open",
            period.token,
            spent,
            len(reserved),
        )
    return built


def charge_of(cost: Decimal | None) -> int:
    return to_micro(cost) if cost else 0


def budgets_settle_in(pipe: Any, *, request_id: str, budgets: str, cost: Decimal | None) -> None:
    """Replace a request's reservations by its cost, as one more command of `pipe`."""
    keys = keys_of(budgets)
    if keys:
        limiter.budget_settle_in(pipe, request_id, keys, charge_of(cost))


def recent_periods(budget: Budget) -> tuple[Period, Period]:
    """The period before the current one (requests admitted then may still be open) and the
    current one."""
    start, _ = period_bounds(budget, timezone.now())
    before, _ = period_bounds(budget, start - timedelta(seconds=1))
    scope = budget_scope(budget)
    return Period(budget, scope, before, start), Period(budget, scope, start, period_bounds(budget, start)[1])


def budgets_reconcile() -> int:
    """The sweep: settle reservations whose request has ended (its process died between the two);
    how many."""
    settled = 0
    for budget in Budget.objects.select_related("group"):
        for period in recent_periods(budget):
            open_ids = limiter.budget_open(period.key)
            if not open_ids:
                continue
            ended = CompletionRequest.objects.filter(
                id__in=open_ids, status__in=TERMINAL_STATUSES
            ).values_list("id", "cost")
            if not ended:
                continue
            pipe = get_redis().pipeline(transaction=False)
            pending = [limiter.budget_settle_in(pipe, str(i), [period.key], charge_of(c)) for i, c in ended]
            replies = pipe.execute(raise_on_error=False)
            settled += sum(1 for p in pending if p.result(replies))
    if settled:
        logger.info("budgets: %d reservation(s) of ended requests settled", settled)
    return settled


def current_period(budget: Budget) -> Period:
    (period,) = periods_now([budget])
    return period


def periods_spend(periods: list[Period]) -> list[tuple[Decimal, Decimal]]:
    """(spent, reserved) of each period, in one round trip: as Redis holds it, or, for a period
    it holds none of (no request yet, or its data was lost), as the database would build it."""
    out = []
    for period, figures in zip(periods, limiter.budget_read([p.key for p in periods]), strict=True):
        if figures.built:
            out.append((from_micro(figures.spent), from_micro(figures.reserved)))
            continue
        rows = period_rows(period)
        spent = rows.filter(status__in=TERMINAL_STATUSES).aggregate(total=Sum("cost"))["total"] or ZERO
        reserved = reserving_rows(rows).aggregate(total=Sum("estimated_cost"))["total"] or ZERO
        out.append((from_micro(to_micro(spent)), from_micro(to_micro(reserved))))
    return out


def period_spend(period: Period) -> tuple[Decimal, Decimal]:
    (found,) = periods_spend([period])
    return found


def budget_states(budgets: list[Budget]) -> list[dict[str, Any]]:
    """Each budget's current period (one round trip for all): spent (requests that ended),
    reserved (their worst cases, of requests not ended), left."""
    periods = periods_now(budgets)
    out = []
    for budget, period, (spent, reserved) in zip(budgets, periods, periods_spend(periods), strict=True):
        out.append(
            {
                "owner": f"key {budget.api_key_id}"
                if budget.api_key_id is not None
                else f"group {budget.group}",
                "period": budget.period_label,
                "start": period.start,
                "reset": period.reset,
                "limit": str(budget.limit),
                "spent": str(spent),
                "reserved": str(reserved),
                "left": str(max(budget.limit - spent - reserved, ZERO)),
                "warn_at": None if budget.warn_at is None else str(budget.warn_at),
                "over_warning": budget.warn_at is not None and spent >= budget.warn_at,
            }
        )
    return out


WARNED_PREFIX = "balancer:budget-warned:"


def budgets_warn() -> int:
    """The sweep: log once per period each budget whose spending passed its soft threshold; how
    many were logged now."""
    logged = 0
    budgets = list(Budget.objects.select_related("api_key", "group").filter(warn_at__isnull=False))
    for budget, state in zip(budgets, budget_states(budgets), strict=True):
        if not state["over_warning"]:
            continue
        period = current_period(budget)
        if get_redis().set(f"{WARNED_PREFIX}{period.token}", "1", nx=True, ex=period.ttl):
            owner = f"key {budget.api_key}" if budget.api_key is not None else f"group {budget.group}"
            logger.warning(
                "budget of %s passed its soft threshold: $%s spent of $%s this %s period (threshold $%s, "
                "$%s reserved by requests not ended)",
                owner,
                state["spent"],
                budget.limit,
                budget.period_label,
                budget.warn_at,
                state["reserved"],
            )
            logged += 1
    return logged
