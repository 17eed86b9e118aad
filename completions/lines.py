"""The rate-limit layer as the completions pipeline uses it: which line a request waits in, what
it costs, quotas put in force, and the wake-up tasks the limiter asks for.

ratelimit/ knows lines, buckets and quotas and nothing of requests, models or Celery: its
functions return what should happen (a wake-up to publish, requests whose deadline passed), and
this module does it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from balancer_project.celery import publish
from balancer_project.redis_conn import decoded, get_redis
from completions.models import (
    PRIORITY_RANK,
    CompletionRequest,
    CompletionStatus,
    ModelGroup,
    Operation,
    Priority,
    ServedModel,
    group_queue,
    queue_name,
)
from completions.registry_cache import registry_cache
from completions.selectors import group_deployments
from completions.spend import prices_of
from completions.tokens import estimate_embedding_tokens, estimate_input_tokens, requested_output_cap
from ratelimit import limiter
from ratelimit.limiter import Budgets, Grant, LineLost, Retry, SettleMode, Wake
from ratelimit.lines import (
    group_of_line,
    is_group_line,
    is_key_line,
    key_line,
    key_of_line,
    key_take,
    line_name,
)
from ratelimit.models import KeyQuota, Quota

logger = logging.getLogger(__name__)
T = TypeVar("T")

WAKE_TASK = "completions.wake"
RUN_TASK = "completions.run"
# A pending wake-up this late is presumed lost, and the periodic tend wakes the head again.
WAKE_GRACE_SECONDS = 2.0


@dataclass
class Expired:
    """Requests whose deadline passed while they waited; the caller marks them expired."""

    request_ids: list[str] = field(default_factory=list)


def line_queue(line: str) -> str:
    """Where a line's tasks go: a model's or a group's own queue; key lines on the default queue
    (their tasks only move requests on to their model's line)."""
    if is_key_line(line):
        return str(settings.CELERY_TASK_DEFAULT_QUEUE)
    if is_group_line(line):
        return group_queue(group_of_line(line))
    provider, model = line.split("/", 1)
    return queue_name(provider, model)


def wake_publish(*, line: str, wake: Wake | None) -> None:
    """Publish the wake-up of a line's head: a task on the line's queue, with a countdown that
    stays far below the broker's visibility timeout (docs/architecture.md)."""
    if wake is None:
        return
    kwargs = {"line": line, "at": wake.at}
    publish(
        WAKE_TASK,
        kwargs=kwargs,
        queue=line_queue(line),
        countdown=min(wake.countdown, settings.BALANCER_MAX_COUNTDOWN_SECONDS) or None,
        # Celery would build these with its safe repr, a tenth of a publish's CPU.
        argsrepr="()",
        kwargsrepr=repr(kwargs),
    )


def run_publish(*, request_id: str, line: str | None, queue: str, countdown: float | None = None) -> None:
    """Publish one attempt of a request (completions.tasks.run_completion)."""
    kwargs: dict[str, Any] = {"request_id": request_id, "line": line}
    publish(RUN_TASK, kwargs=kwargs, queue=queue, countdown=countdown, argsrepr="()", kwargsrepr=repr(kwargs))


def quota_get(*, served_model: ServedModel) -> Quota | None:
    """A model's quota (from the registry cache)."""
    return registry_cache.get(
        ("quota", served_model.pk),
        lambda: Quota.objects.filter(served_model=served_model).first(),
        keep_empty=True,
    )


def model_line(served_model: ServedModel) -> str:
    return line_name(served_model.provider.name, served_model.name)


def _limits(served_model: ServedModel, quota: Quota | None) -> dict[str, float] | None:
    limits = quota.limits() if quota is not None else None
    if limits is not None:
        limits["aging"] = settings.BALANCER_PRIORITY_AGING_SECONDS
        limits["maxc"] = settings.BALANCER_MAX_COUNTDOWN_SECONDS
    return limits


def quota_sync(*, served_model: ServedModel, quota: Quota | None, wake: bool = True) -> Expired:
    """Put a model's quota in force on every process (they read it from Redis on every check),
    and wake its line: raised limits may let the head start now. (A deployment of a group: its
    group's line has its own copy, written by group_sync.)"""
    line = model_line(served_model)
    limiter.configure(line, _limits(served_model, quota))
    return line_watch(line=line, force=True) if wake else Expired()


def group_sync(*, group: ModelGroup, wake: bool = True, quotas: dict[int, Quota] | None = None) -> Expired:
    """Put a group's deployments, their quotas and weights, its policy and the cooldown rule in
    force on every process, and wake its line. `quotas`: every quota by served model id, when
    the caller has them already (the periodic tend)."""
    deployments: dict[str, dict[str, float] | None] = {}
    for served in group_deployments(group):
        quota = quotas.get(served.pk) if quotas is not None else quota_get(served_model=served)
        limits = _limits(served, quota) or {}
        limits["weight"] = served.weight
        prices = prices_of(served)
        if prices is not None:  # for the cost policy (US dollars per million tokens)
            limits["pin"], limits["pout"] = float(prices.input), float(prices.output)
        deployments[str(served.pk)] = limits
    limiter.configure_group(
        group.line,
        deployments=deployments,
        policy=group.policy,
        cooldown={
            "cool": settings.BALANCER_COOLDOWN_SECONDS,
            "cool_max": settings.BALANCER_COOLDOWN_MAX_SECONDS,
            "fails": settings.BALANCER_COOLDOWN_FAILURES,
        },
        scheduling=group.scheduling,
        aging=settings.BALANCER_PRIORITY_AGING_SECONDS,
        max_countdown=settings.BALANCER_MAX_COUNTDOWN_SECONDS,
    )
    return line_watch(line=group.line, force=True) if wake else Expired()


def key_quota_sync(*, key_quota: KeyQuota, deleted: bool = False, wake: bool = True) -> Expired:
    line = key_line(key_quota.api_key_id)
    limits = key_quota.limits() if key_quota.limited and not deleted else None
    if limits is not None:
        limits["aging"] = settings.BALANCER_PRIORITY_AGING_SECONDS
        limits["maxc"] = settings.BALANCER_MAX_COUNTDOWN_SECONDS
    limiter.configure(line, limits)
    return line_watch(line=line, force=True) if wake else Expired()


def line_watch(*, line: str, force: bool = False) -> Expired:
    """Expire passed deadlines, free lost slots, and wake the head if its wake-up is overdue (or,
    with `force`, in any case: its limits changed)."""
    wake, expired = limiter.watch(line, grace=-1 if force else WAKE_GRACE_SECONDS)
    wake_publish(line=line, wake=wake)
    return Expired(expired)


def request_cost(
    *, served_model: ServedModel, quota: Quota | None, payload: dict[str, Any], operation: str = "chat"
) -> tuple[int, int]:
    """(input tokens, output tokens) reserved for a request before it runs (embeddings: their
    input alone)."""
    if operation == Operation.EMBEDDINGS:
        return estimate_embedding_tokens(payload.get("input")), 0
    default_output = (
        quota.default_output_tokens if quota else None
    ) or settings.BALANCER_DEFAULT_OUTPUT_TOKENS
    return (
        estimate_input_tokens(payload, kind=served_model.provider.kind, model=served_model.name),
        requested_output_cap(payload) or default_output,
    )


def arrival_ticket(at: datetime) -> int:
    """A ticket is a request's arrival time in microseconds: the line is ordered by when requests
    arrived, not by when Redis first heard of them. So a request put in line late — from the
    outbox after Redis was unreachable, or by the sweep after Redis lost its data — takes the
    place its arrival gives it, ahead of every request that arrived after it."""
    return int(at.timestamp() * 1_000_000)


def line_enter(
    *,
    request: Any,
    line: str,
    max_wait: float | None,
    ticket: float | None = None,
    arrived: datetime | None = None,
    absent: bool = False,
    budgets: Budgets | None = None,
) -> bool:
    """Put a request in `line` (called after commit) at its arrival time — the row's creation, or
    `arrived` (a request its key's line let through arrives at its model's line then) — in its
    priority class, its key's flow on a fair line; or at its own place `ticket` again (a
    request recovered by the sweeper). In its group's line, only the deployments it may use
    take it. With `absent`, only if it is not in the line or started from it already (one step).
    `budgets`: its worst case, reserved in the same step (raises BudgetRefused or BudgetUnknown,
    nothing done). A line Redis lost is written again first (line_rebuild). Returns whether it
    entered."""

    def enter(configured: bool) -> int:
        _, position = limiter.enqueue(
            line,
            str(request.id),
            input_tokens=request.estimated_input_tokens,
            output_tokens=request.estimated_output_tokens,
            max_wait=max_wait,
            ticket=arrival_ticket(arrived or request.created_at),
            deployments=request.deployment_ids if is_group_line(line) else None,
            flow=str(request.api_key_id),
            weight=request.api_key.weight,
            priority=PRIORITY_RANK[Priority(request.priority)],
            place=ticket,
            absent=absent,
            configured=configured,
            budgets=budgets,
        )
        return position

    # A group's line always has its configuration; a model's or a key's when it had a quota as
    # the request was accepted (one removed since is found out by line_rebuild).
    configured = is_group_line(line) or (request.key_limited if is_key_line(line) else request.rate_limited)
    return _rebuilt_if_lost(line, configured, enter) >= 0


def _rebuilt_if_lost(line: str, configured: bool, act: Callable[[bool], T]) -> T:
    """`act(configured)`; where it finds the line lost with Redis's data (LineLost), the line is
    written again (line_rebuild) and `act` runs once more, expecting nothing of it."""
    try:
        return act(configured)
    except LineLost:
        line_rebuild(line)
        return act(False)


def key_take_now(*, api_key_id: int, request_id: str, input_tokens: int, output_tokens: int) -> float | None:
    """Fail-fast keys: take the cost from the key's line now (None) or say how many seconds until
    it would fit (ratelimit.lines.key_take); a line Redis lost is written again first."""

    def take(configured: bool) -> float | None:
        return key_take(
            api_key_id=api_key_id,
            request_id=request_id,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            configured=configured,
        )

    return _rebuilt_if_lost(key_line(api_key_id), True, take)


def line_rebuild(line: str) -> None:
    """Write again a line Redis lost (it restarted without its data) from the database — a
    model's quota, a group's deployments, a key's quota — before anything enters it, and start
    it conservatively (restore.lua): its buckets empty where the database shows calls on it
    within a bucket's span (the provider's own bucket may be as empty; full otherwise, as a new
    line's), its concurrency slots unknown until the calls still running renew theirs. A line
    whose quota is gone stays unconfigured (unlimited). Buckets Redis holds are left alone, so a
    line written again twice (two processes found it lost) starts once."""
    source = _line_source(line)
    if source is None:
        return
    span, requests, stamp = source
    now = timezone.now()
    running = requests.filter(status=CompletionStatus.RUNNING).exists()
    called = (
        running
        or requests.filter(
            created_at__gte=now - timedelta(days=1), **{f"{stamp}__gte": now - timedelta(seconds=span)}
        ).exists()
    )
    started = limiter.restore(line, empty=called, running=running)
    if started:
        (logger.warning if called else logger.info)(
            "line %s: configured again from the database (Redis lost it); %d bucket(s) start %s",
            line,
            started,
            "empty: it had calls within a bucket's span" if called else "full: it had no recent calls",
        )


def _line_source(line: str) -> tuple[float, QuerySet[CompletionRequest], str] | None:
    """Write `line`'s configuration from the database; returns the span of its buckets (seconds
    of refill: the longest of its deployments'), its requests and the field that says when one
    took from its buckets (a model's or group's line at its claim; a key's from its arrival on),
    or None when it has no quota."""
    if is_key_line(line):
        key_quota = KeyQuota.objects.filter(api_key_id=key_of_line(line)).first()
        if key_quota is None or not key_quota.limited:
            limiter.configure(line, None)
            return None
        key_quota_sync(key_quota=key_quota, wake=False)
        requests = CompletionRequest.objects.filter(api_key_id=key_quota.api_key_id)
        return key_quota.burst_seconds, requests, "created_at"
    if is_group_line(line):
        group = ModelGroup.objects.filter(name=group_of_line(line)).first()
        if group is None:
            return None
        group_sync(group=group, wake=False)
        bursts = Quota.objects.filter(served_model__in=group_deployments(group)).values_list(
            "burst_seconds", flat=True
        )
        return max(bursts, default=0.0), CompletionRequest.objects.filter(group=group.name), "claimed_at"
    provider, model = line.split("/", 1)
    served = (
        ServedModel.objects.select_related("provider").filter(provider__name=provider, name=model).first()
    )
    quota = Quota.objects.filter(served_model=served).first() if served is not None else None
    if served is None or quota is None:
        limiter.configure(line, None)
        return None
    quota_sync(served_model=served, quota=quota, wake=False)
    # A group's calls to this deployment took from the same provider bucket: counted too.
    return quota.burst_seconds, CompletionRequest.objects.filter(provider=provider, model=model), "claimed_at"


def line_acquire(*, line: str, request_id: str | None, token: str = "", wake_at: str = "") -> Grant:
    """Ask to start `request_id` (or, for a wake-up, the head) as the attempt of fencing `token`;
    publishes the wake-up the limiter asks for. The caller marks `grant.expired` expired. A model's
    or group's line holds the reservation for one attempt, whose worker renews its lease
    (completions.leases); a key's line for the request's whole life (BALANCER_KEY_HOLD_SECONDS),
    settled however it ends."""
    if is_key_line(line):
        lease, settling = settings.BALANCER_KEY_HOLD_SECONDS, 0.0
    else:
        # After a failover that lost slots, two renewal passes (completions.leases: one per
        # quarter lease) put back those of every call still running, one late pass included.
        lease, settling = settings.BALANCER_LEASE_SECONDS, settings.BALANCER_LEASE_SECONDS / 2
    grant = limiter.acquire(
        line, request_id, lease_seconds=lease, token=token, wake_at=wake_at, settling_seconds=settling
    )
    wake_publish(line=line, wake=grant.wake)
    return grant


def line_settle(*, line: str, request_id: str, mode: SettleMode, token: str = "") -> float | None:
    """Give back a request's reservation outside an attempt (cancelled, lost, refused); returns
    its ticket. With `token`, only the reservation of that attempt."""
    settled = limiter.settle(line, request_id, mode=mode, token=token)
    wake_publish(line=line, wake=settled.wake)
    return settled.ticket


def line_return(*, line: str, request_id: str, in_seconds: float, token: str = "") -> bool:
    """Undo a start: the reservation back, the request back in its own place in line, to start
    again no sooner than `in_seconds` from now. Its deadline in line is not restored (the line
    forgot it when it said go, and the row that has it is what could not be reached): should the
    database stay away past it, the request runs late rather than expiring. With `token`, only
    the start of that attempt. Returns whether it went back (False: it held no reservation)."""
    settled = limiter.settle(
        line, request_id, mode=SettleMode.REFUND, retry=Retry(in_seconds=in_seconds), token=token
    )
    wake_publish(line=line, wake=settled.wake)
    return settled.settled


def line_leave(*, line: str, request_id: str) -> bool:
    """Take a request out of `line`; whether it was there."""
    left, wake = limiter.leave(line, request_id)
    wake_publish(line=line, wake=wake)
    return left


# Lines whose model, group, quota or key is gone while requests still waited in them: the sweep
# forgets each once it is idle.
RETIRED_KEY = "balancer:lines:retired"


def line_forget(*, line: str, deployment: str = "") -> bool:
    """A line (or one deployment of a group's line) whose owner is gone takes its Redis keys with
    it: now if it is idle, else once the sweep finds it idle. Returns whether it is gone now."""
    if limiter.forget(line, deployment):
        return True
    get_redis().sadd(RETIRED_KEY, f"{line}\n{deployment}")
    return False


def lines_forget_retired() -> int:
    """Forget the retired lines that are idle now (the sweep); how many."""
    client = get_redis()
    forgotten = 0
    for entry in decoded(client.smembers(RETIRED_KEY)):
        line, _, deployment = entry.partition("\n")
        if limiter.forget(line, deployment):
            client.srem(RETIRED_KEY, entry)
            forgotten += 1
    return forgotten
