"""What an attempt comes to, and what applying it does — decided without I/O, so that both are
unit-tested like any pure function (tests/completions/test_outcomes.py).

`attempt_outcome` classifies the call: succeeded, failed, retry after T, cancelled, or on to the
group's fallback, with how to settle the reservation. `outcome_plan` turns that into a `Plan`:
the row's next state and fields, the announcement (final states), the settlements of the
model's and the key's lines, the provider's reported limits, the metrics, and the request's next
step. completions.attempts.plan_execute does what a plan says, in its order.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings

from completions.models import CompletionRequest, CompletionStatus, ModelGroup, ServedModel, Tier
from completions.providers import CompletionResult, ProviderError
from completions.providers.base import reported_limits, reported_remaining
from completions.routing import Route
from completions.spend import Prices
from completions.tiers import Charge
from ratelimit.limiter import Health, Retry, SettleMode, Throttled
from ratelimit.lines import key_line


@dataclass(frozen=True)
class Call:
    """What the provider call came to: a result, an error, a client that went away (with what it
    had been sent), or an unexpected exception in our own code."""

    result: CompletionResult | None = None
    error: ProviderError | None = None
    cancelled: CompletionResult | None = None
    crashed: bool = False
    seconds: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """What one attempt comes to, and everything applying it needs.

    status: the row's next state (queued again for a retry). settle: how the reservation is
    settled (see ratelimit/lua/settle.lua). retry_in: seconds before the retry may start (None:
    no retry). throttled: the provider's 429, as news about its bucket. health: what the attempt
    showed of the deployment called (a group's line cools a failing one down)."""

    status: str
    settle: SettleMode
    input_tokens: int = 0
    output_tokens: int = 0
    retry_in: float | None = None
    throttled: Throttled | None = None
    error: dict[str, Any] | None = None
    upstream_status: int | None = None
    result: CompletionResult | None = None
    metric_status: int | None = None
    health: Health | None = None
    # Its group could not serve it: it goes to the group's fallback (group, route) instead.
    fallback: tuple[ModelGroup, Route] | None = None
    # The tier its next attempts go in, when this one changes it (flex unavailable: realtime).
    tier_next: str = ""

    @property
    def final(self) -> bool:
        return self.retry_in is None and self.fallback is None


def attempt_outcome(
    *,
    call: Call,
    estimate: tuple[int, int],
    attempts: int,
    left: float | None,
    backoff: float,
    deployments: int = 1,
    fallback: tuple[ModelGroup, Route] | None = None,
    unavailable: bool = False,
    then_realtime: bool = False,
) -> Outcome:
    """Classify an attempt (pure). `estimate`: the reservation (input, output tokens); `attempts`:
    this attempt's number; `left`: what is left of the request's deadline (None: none);
    `backoff`: the delay a retry would wait (already at least the upstream's retry-after);
    `deployments`: how many deployments of its group it may go to. With more than one, an error
    that shows the deployment at fault (its key refused, unreachable, a 5xx or a timeout) or
    throttled is tried again at once from its own place in line — the line sends it to a
    deployment that is not cooling down or held — with that many times the attempts. `fallback`:
    where its group sends what it cannot serve; a request that would otherwise fail for its
    group's sake (a deployment at fault, throttled, or a transient error with no attempt left),
    or whose only deployment just refused its key or could not be reached, goes there instead,
    from its arrival's place in that group's line. `unavailable`: the error is flex processing
    without capacity now (a 429 that is no news about the deployment's buckets: nothing is
    throttled); `then_realtime`: the request goes on in realtime at once, from its own place,
    an attempt that does not count against its retries."""
    finished = call.result or call.cancelled
    if finished is not None:
        # Charged its usage report; without one, the reservation stands as the best estimate.
        used_in = estimate[0] if finished.input_tokens is None else finished.input_tokens
        used_out = estimate[1] if finished.output_tokens is None else finished.output_tokens
    if call.result is not None:
        return Outcome(
            status=CompletionStatus.SUCCEEDED,
            settle=SettleMode.USAGE,
            input_tokens=used_in,
            output_tokens=used_out,
            upstream_status=call.result.status,
            result=call.result,
            metric_status=call.result.status,
            health=Health("ok", latency=call.seconds),
        )
    if call.cancelled is not None:
        return Outcome(
            status=CompletionStatus.CANCELLED,
            settle=SettleMode.USAGE,
            input_tokens=used_in,
            output_tokens=used_out,
            error={"message": "The client went away; the upstream call was aborted.", "transient": False},
            result=call.cancelled,
            metric_status=499,
        )
    exc = call.error
    if exc is None:
        return Outcome(
            status=CompletionStatus.FAILED,
            settle=SettleMode.REFUND,
            error={"message": "internal error while calling the provider", "transient": False},
        )
    # Never processed upstream (no answer, throttled, overloaded): everything comes back.
    # Refused (4xx): the request counted, its tokens did not. A 5xx: unknown, keep it all.
    if exc.status is None or exc.status in (429, 529):
        mode = SettleMode.REFUND
    elif 400 <= exc.status < 500:
        mode = SettleMode.TOKENS
    else:
        mode = SettleMode.KEEP
    throttled = (
        Throttled(hold=exc.retry_after, remaining=reported_remaining(exc.headers))
        if exc.status == 429 and exc.transient and not unavailable
        else None
    )
    elsewhere = deployments > 1 and bool(exc.fault or throttled) and (exc.transient or exc.fault == "auth")
    if elsewhere:
        backoff = 0.0
    budget = settings.BALANCER_MAX_ATTEMPTS * (deployments if elsewhere else 1)
    if then_realtime:
        backoff, budget = 0.0, budget + 1
    # Retry only within the request's deadline: a backoff past it fails now, with the reason.
    retry = (exc.transient or elsewhere) and attempts < budget and (left is None or backoff < left)
    # To the fallback: what would fail for its group's sake, and what its only deployment just
    # refused or could not take (cooling down now: its group has no healthy deployment left).
    for_group = not retry and bool(exc.fault or throttled or exc.transient)
    refer = (
        fallback
        if (for_group or (not elsewhere and exc.fault in ("auth", "down"))) and (left is None or left > 0)
        else None
    )
    if refer is not None:
        retry = False
    return Outcome(
        status=CompletionStatus.QUEUED if retry or refer else CompletionStatus.FAILED,
        settle=mode,
        input_tokens=estimate[0],
        output_tokens=estimate[1],
        retry_in=backoff if retry else None,
        throttled=throttled,
        error=exc.as_error(),
        upstream_status=exc.status,
        metric_status=exc.status,
        health=Health(exc.fault) if exc.fault else None,
        fallback=refer,
        tier_next=Tier.STANDARD if then_realtime else "",
    )


def attempt_cost(outcome: Outcome, prices: Prices | None) -> Decimal:
    """What a final attempt cost at `prices` (None: nothing was called, or its deployment has no
    prices): its usage (the reservation when it reported none, as the line charges it); a call
    whose outcome is unknown (a 5xx, a timeout: the provider may have done the work) its worst
    case; a call refused or never processed nothing."""
    if prices is None or outcome.settle not in (SettleMode.USAGE, SettleMode.KEEP):
        return Decimal(0)
    cached = outcome.result.cached_input_tokens if outcome.result is not None else None
    return prices.cost(outcome.input_tokens, outcome.output_tokens, cached or 0)


def saving(outcome: Outcome, charge: Charge | None) -> Decimal:
    """What a final attempt in a cheaper tier saved: its cost at the standard prices less its
    cost in its tier (0 for a standard attempt, or one whose deployment has no standard price)."""
    if charge is None or charge.tier == Tier.STANDARD or charge.standard is None:
        return Decimal(0)
    return max(Decimal(0), attempt_cost(outcome, charge.standard) - attempt_cost(outcome, charge.prices))


@dataclass(frozen=True)
class SettleStep:
    """One settlement: of `line`, by `mode`, for these tokens; `retry`: the request back in its
    own place in the same step; `fenced`: only the attempt's own reservation (its model's or
    group's line; a key's line holds the request's for its whole life)."""

    line: str
    mode: SettleMode
    input_tokens: int = 0
    output_tokens: int = 0
    retry: Retry | None = None
    throttled: Throttled | None = None
    health: Health | None = None
    fenced: bool = True


@dataclass(frozen=True)
class Adapt:
    """Limits the provider reported in its headers, for `line` (`deployment` of a group's)."""

    line: str
    reported: dict[str, float]
    deployment: str = ""


@dataclass(frozen=True)
class Plan:
    """What applying an outcome does, in this order:

    1. the row: `status` and `row` fields, written only while the attempt still owns it (a final
       state with `announce`: completion_request_finish's arguments, the reply and the stream's
       end going out in the same round trip as 2);
    2. `settlements`, `adapt` and `metric` (record_attempt's arguments), one Redis round trip;
    3. the wake-ups the settlements ask for;
    4. `republish_in`: an unlimited model's retry, its task again after that many seconds;
       `deliver`: the request, moved to its fallback by the row's fields, into that line.
    `log`: what the log says of it ("" for a final state: finishing logs it)."""

    status: str
    row: dict[str, Any]
    log: str
    announce: dict[str, Any] | None = None
    settlements: tuple[SettleStep, ...] = ()
    adapt: Adapt | None = None
    metric: dict[str, Any] | None = None
    republish_in: float | None = None
    deliver: bool = False


def outcome_plan(
    *,
    request: CompletionRequest,
    line: str | None,
    outcome: Outcome,
    seconds: float | None,
    headers: dict[str, str],
    deployment: ServedModel | None,
    left: float | None,
    charge: Charge | None = None,
) -> Plan:
    """The plan of applying `outcome` to `request`'s attempt (pure: reads the request, writes
    nothing). `line`: the line it holds a reservation in (None: an unlimited model's);
    `seconds`: the upstream call's (None: nothing was called); `deployment`: the one of its group
    the attempt called; `left`: what is left of its deadline; `charge`: its tier and its
    deployment's prices there as the attempt started (None: nothing was called)."""
    called = seconds is not None
    result = outcome.result
    retry = outcome.retry_in is not None
    referred = outcome.fallback
    message = (outcome.error or {}).get("message")
    row: dict[str, Any] = {"error": outcome.error, "upstream_status": outcome.upstream_status}
    prices = charge.prices if charge is not None else None
    if charge is not None and called:
        row["served_tier"] = outcome.tier_next or charge.tier
    if deployment is not None and called:
        entry = {"attempt": request.attempts, "deployment": str(deployment), "status": outcome.metric_status}
        row["served_by"] = [*request.served_by, entry]
    announce = None
    if referred is not None:
        fallback, route = referred
        row.update(
            group=fallback.name,
            deployments=route.mask,
            fallback_from=request.group,
            provider=route.first.provider.name,
            model=route.first.name,
            estimated_input_tokens=route.cost[0],
            estimated_output_tokens=route.cost[1],
        )
        log = f"attempt {request.attempts} failed ({message}); {request.group} cannot serve it: its fallback {fallback} does"
    elif retry:
        elsewhere = (
            " elsewhere in its group" if outcome.health is not None and outcome.health.fault != "ok" else ""
        )
        log = f"attempt {request.attempts} failed ({message}); trying again in {outcome.retry_in:.2f} s{elsewhere}"
    else:
        log = ""  # completion_request_finish logs the final state
        if result is not None:
            row.update(
                response=result.body,
                input_tokens=result.input_tokens,
                output_tokens=result.output_tokens,
                cached_input_tokens=result.cached_input_tokens,
            )
        row["cost"] = attempt_cost(outcome, prices if called else None)
        if called:
            row["prices"] = prices.as_json() if prices is not None else None
        announce = {
            "stream": request.stream,
            "reply_to": request.reply_to,
            "queue_seconds": request.queue_seconds,
            "deployment": f"{request.provider}/{request.model}" if called else "",
            "reply_text": result.text
            if result is not None and outcome.status == CompletionStatus.SUCCEEDED
            else None,
        }
    settlements = []
    if line is not None:
        settlements.append(
            SettleStep(
                line,
                outcome.settle,
                outcome.input_tokens,
                outcome.output_tokens,
                retry=Retry(outcome.retry_in or 0.0, left) if retry and referred is None else None,
                throttled=outcome.throttled,
                health=outcome.health,
            )
        )
    if outcome.final and request.key_limited:
        settlements.append(
            SettleStep(
                key_line(request.api_key_id),
                outcome.settle,
                outcome.input_tokens,
                outcome.output_tokens,
                fenced=False,
            )
        )
    reported = reported_limits(headers) if line is not None else {}
    adapt = (
        Adapt(line, reported, str(deployment.pk) if deployment is not None else "")
        if line and reported
        else None
    )
    metric = None
    if called:
        claimed_at = request.claimed_at
        first = request.attempts == 1 and claimed_at is not None
        metric = {
            "model": f"{request.provider}/{request.model}",
            "status": outcome.metric_status,
            "upstream_seconds": seconds or 0.0,
            "queue_seconds": (claimed_at - request.created_at).total_seconds()
            if claimed_at and first
            else None,
            "input_tokens": result.input_tokens if result else None,
            "output_tokens": result.output_tokens if result else None,
            "retried": retry,
            "cost": row.get("cost"),
            "tier": charge.tier if charge is not None else Tier.STANDARD,
            "saved": saving(outcome, charge) if "cost" in row else None,
        }
    return Plan(
        status=outcome.status,
        row=row,
        log=log,
        announce=announce,
        settlements=tuple(settlements),
        adapt=adapt,
        metric=metric,
        republish_in=outcome.retry_in if retry and line is None else None,
        deliver=referred is not None,
    )
