"""Writes: API keys, submitting, cancelling and executing completion requests."""

from __future__ import annotations

import logging
import random
import secrets
import uuid
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from redis.exceptions import RedisError

from balancer_project.logs import request_id_var
from balancer_project.redis_conn import get_redis
from completions import rows
from completions.events import completion_event_publish
from completions.lines import (
    key_take_now,
    line_enter,
    line_leave,
    line_queue,
    line_settle,
    quota_get,
    run_publish,
)
from completions.models import (
    PRIORITY_RANK,
    ApiKey,
    ClientBatch,
    CompletionRequest,
    CompletionStatus,
    ModelGroup,
    Operation,
    Priority,
    ServedModel,
    Tier,
    TierAsked,
)
from completions.routing import CostExceedsLimit, ModelNotAllowed, fallback_route, request_route
from completions.selectors import api_key_hash
from completions.spend import (
    BudgetExceeded,
    budgets_of,
    budgets_settle_in,
    may_wait_for_reset,
    periods_now,
    reserving,
    tokens_of,
    worst_case,
)
from completions.streaming import stream_end
from completions.tiers import route_in_tier
from completions.tokens import output_cap_problem
from ratelimit.limiter import Budgets, SettleMode, budget_reserve
from ratelimit.lines import key_line, key_quota_of
from ratelimit.models import KeyQuota

logger = logging.getLogger(__name__)

KEY_PREFIX = "lb-"


class DispatchFailed(Exception):
    """The broker did not take a task now. The row is committed and stays queued: the outbox or
    the sweeper delivers it as soon as Redis answers again."""


class LimiterUnavailable(Exception):
    """A fail-fast key's rate could not be checked (Redis unreachable); nothing was stored."""


class InvalidPayload(Exception):
    """The provider's request body names something the balancer cannot take (an output cap out
    of range): refused before anything is written."""


class PriorityNotAllowed(Exception):
    """The request asks for a higher priority than its key may use."""


class KeyRateExceeded(Exception):
    """A fail-fast key is over its rate; `retry_after` seconds until the request would fit."""

    def __init__(self, retry_after: float, message: str = "") -> None:
        super().__init__(message or f"Rate limit of this API key reached; retry after {retry_after:.1f} s.")
        self.retry_after = retry_after


class KeyQueueFull(KeyRateExceeded):
    """The key has as many requests waiting as it may (BALANCER_KEY_MAX_QUEUED or its quota's
    max_queued): one key cannot fill the lines every other key waits in."""

    def __init__(self, cap: int) -> None:
        retry_after = settings.BALANCER_KEY_QUEUE_FULL_RETRY_SECONDS
        super().__init__(
            retry_after,
            f"This API key already has {cap} requests waiting, as many as it may; "
            f"retry after {retry_after:g} s, when some have started.",
        )


def api_key_create(*, name: str, user: User | None = None) -> tuple[ApiKey, str]:
    """Create a client key. Returns the row and the raw key, which is not stored and cannot be
    shown again."""
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(name=name, prefix=raw[:10], key_hash=api_key_hash(raw), user=user)
    return key, raw


def api_key_for_user(*, user: User) -> ApiKey:
    """The key a staff user acts with in the browsable API (session login, no raw key needed)."""
    key = ApiKey.objects.filter(user=user).first()
    if key is None:
        key, _ = api_key_create(name=f"browser:{user.get_username()}", user=user)
    return key


def key_queue_cap(key_quota: KeyQuota | None) -> int:
    """How many requests a key may have waiting: its quota's max_queued, else BALANCER_KEY_MAX_QUEUED."""
    if key_quota is not None and key_quota.max_queued is not None:
        return int(key_quota.max_queued)
    return int(settings.BALANCER_KEY_MAX_QUEUED)


def completion_request_create(
    *,
    api_key: ApiKey,
    served_model: ServedModel,
    payload: dict[str, Any],
    max_wait: float | None = None,
    reply_to: str = "",
    group: ModelGroup | None = None,
    priority: str = Priority.DEFAULT,
    operation: str = Operation.CHAT,
    tier: str = TierAsked.AUTO,
    client_batch: ClientBatch | None = None,
    custom_id: str = "",
    queue_checked: bool = False,
) -> CompletionRequest:
    """Persist a request and, once the row is committed, put it in line and on its queue.
    `reply_to`: the Redis channel its worker sends the result to (completions.waiting).
    `group`: sent to a model group (any of its deployments of `served_model`'s format may serve
    it); without one, to `served_model` alone — through its group's line if it is a deployment.
    `priority`: its class in line, at most its key's highest (PriorityNotAllowed). `operation`:
    a chat completion, or embeddings (`payload` is then an embeddings request body). `tier`:
    the tier it asks for (completions.tiers); pinned to flex, it may go only to deployments that
    offer flex (TierNotOffered when none does). `client_batch`, `custom_id`: the client's batch
    it is a line of (completions.client_batches); `queue_checked`: its key's room for waiting
    requests was checked for all of its batch at once.

    Steps:
    0. An output cap out of range is refused (InvalidPayload).
    1. Its route (completions.routing): the deployments it may go to — the key's quota may
       restrict models (ModelNotAllowed) — and its estimated cost, refused (CostExceedsLimit)
       if it can never fit the key's buckets or those of any deployment it may go to (the
       others are left out), rather than let it wait forever. A group that cannot serve it
       (no healthy deployment, or a wait past its max_wait) hands it to its fallback.
    3. A key with as many requests waiting as it may is refused (KeyQueueFull). A fail-fast key
       over its rate is refused (KeyRateExceeded, with the seconds to wait); otherwise its cost
       is taken now.
    4. Insert the row (queued).
    5. After commit: join the key's line (a key with a rate quota that waits), else the model's
       line (a model with a quota), and publish the task. If Redis cannot take it, the row stays
       queued in the outbox, delivered as soon as Redis answers: the request is accepted all the
       same (a fail-fast key, whose rate cannot be checked then, gets LimiterUnavailable).
    """
    problem = output_cap_problem(payload)
    if problem:
        raise InvalidPayload(problem)
    if PRIORITY_RANK[Priority(priority)] < PRIORITY_RANK[Priority(api_key.max_priority)]:
        raise PriorityNotAllowed(
            f"This API key may ask for priority {api_key.max_priority} at most, not {priority}."
        )
    key_quota = key_quota_of(api_key)
    route = request_route(
        key_quota=key_quota, served_model=served_model, group=group, payload=payload, operation=operation
    )
    fallback_from = ""
    if group is not None:
        fell = fallback_route(
            key_quota=key_quota,
            served_model=served_model,
            group=group,
            route=route,
            payload=payload,
            max_wait=max_wait,
            operation=operation,
        )
        if fell is not None:
            fallback_from, (group, route) = group.name, fell
            logger.info("request to %s sent to its fallback %s", fallback_from, group.name)
    route = route_in_tier(route, tier)
    served_model = route.first
    payload = {**payload, "model": served_model.name}
    input_tokens, output_tokens = route.cost
    # Its worst case, reserved from every budget it falls under in its first line's step.
    estimated_cost = worst_case(route.deployments, input_tokens, output_tokens)
    budgets = tokens_of(periods_now(budgets_of(api_key=api_key, group=route.group)))
    cap = key_queue_cap(key_quota)
    # Counted, not reserved: simultaneous submissions may pass the cap by the web threads' number.
    if not queue_checked and rows.queued_of_key(api_key.pk, up_to=cap) >= cap:
        raise KeyQueueFull(cap)
    key_limited = key_quota is not None and key_quota.limited
    fail_fast = key_quota is not None and key_limited and key_quota.fail_fast
    request_id = uuid.uuid4()
    request_id_var.set(str(request_id))
    if fail_fast:
        try:
            retry_after = key_take_now(
                api_key_id=api_key.pk,
                request_id=str(request_id),
                input_tokens=input_tokens,
                output_tokens=output_tokens,
            )
        except RedisError as exc:
            raise LimiterUnavailable(str(exc)) from exc
        if retry_after is not None:
            raise KeyRateExceeded(retry_after)
    # One INSERT commits by itself; inside a caller's transaction, on_commit waits for it.
    try:
        request = CompletionRequest(
            id=request_id,
            api_key=api_key,
            provider=served_model.provider.name,
            model=served_model.name,
            group=route.group,
            deployments=route.mask,
            fallback_from=fallback_from,
            priority=priority,
            tier=tier,
            client_batch=client_batch,
            custom_id=custom_id,
            operation=operation,
            payload=payload,
            estimated_input_tokens=input_tokens,
            estimated_output_tokens=output_tokens,
            estimated_cost=estimated_cost,
            budgets=budgets,
            max_wait=max_wait,
            rate_limited=bool(route.group) or quota_get(served_model=served_model) is not None,
            key_limited=key_limited,
            stream=bool(payload.get("stream")),
            reply_to=reply_to,
        )
        rows.insert(request)
    except Exception:
        if fail_fast:
            line_settle(line=key_line(api_key.pk), request_id=str(request_id), mode=SettleMode.REFUND)
        raise
    waits_for_key = key_limited and not fail_fast
    refused: list[BudgetExceeded] = []
    transaction.on_commit(lambda: _enter_line(request, waits_for_key, refused))
    if refused:  # outside a transaction, on_commit ran at once
        raise refused[0]
    return request


def _enter_line(request: CompletionRequest, waits_for_key: bool, refused: list[BudgetExceeded]) -> None:
    """After commit: the first line a request waits in, and its first task. If Redis cannot be
    reached the row stays queued and goes into the outbox (`undelivered`): the periodic tend
    (completions.maintenance) puts it in line, in created order, as soon as Redis answers. A
    budget that cannot take it ended it (failed, budget_exceeded): said in `refused`."""
    try:
        completion_request_deliver(request=request, waits_for_key=waits_for_key, first=True)
    except BudgetExceeded as exc:
        refused.append(exc)
    except Exception as exc:
        logger.warning("request %s: Redis unavailable (%s); it waits in the outbox", request.id, exc)
        CompletionRequest.objects.filter(id=request.id, status=CompletionStatus.QUEUED).update(
            undelivered=True
        )


def completion_request_deliver(
    *, request: CompletionRequest, waits_for_key: bool, absent: bool = False, first: bool = False
) -> bool:
    """Put a queued request in its first line and publish its task. With `absent` (the sweep),
    only if it is neither in that line nor started from it — checked and done in one step, so
    a request granted meanwhile is never put back. `first`: its first delivery (at submission,
    or from the outbox), which reserves its worst case from its budgets in the same step; one
    that cannot is ended (failed, budget_exceeded) and BudgetExceeded raised. Returns whether it
    was delivered. A request asking for a provider batch (`tier: batch`) waits for it in no
    line once its key's line, if it waits in one, has let it through (completions.batching)."""
    awaits = not waits_for_key and request.tier == TierAsked.BATCH
    line = key_line(request.api_key_id) if waits_for_key else None if awaits else request.line

    def enter(budgets: Budgets | None) -> bool:
        if line is not None:
            return line_enter(
                request=request, line=line, max_wait=remaining_wait(request), absent=absent, budgets=budgets
            )
        if budgets is not None:
            budget_reserve(str(request.id), budgets)
        return True

    try:
        entered = reserving(request, enter) if first and request.budgets else enter(None)
    except BudgetExceeded as exc:
        if may_wait_for_reset(request, exc):
            CompletionRequest.objects.filter(id=request.id, status=CompletionStatus.QUEUED).update(
                budget_wait_until=exc.period.reset
            )
            request.budget_wait_until = exc.period.reset
            logger.info("request %s waits for its budget's next period (%s)", request.id, exc.reset_at)
            return False
        _refuse(request, exc, key_took=request.key_limited and not waits_for_key)
        raise
    if not entered:
        return False
    if awaits:
        batch_await(request)
        return True
    completion_request_dispatch(request=request, line=line if waits_for_key else None)
    return True


def batch_await(request: CompletionRequest) -> None:
    """A request asking for a provider batch, out of every line: it waits for its deployment's
    next batch (served_tier batch while queued marks it; the sweep leaves it be)."""
    CompletionRequest.objects.filter(id=request.id, status=CompletionStatus.QUEUED).update(
        served_tier=Tier.BATCH
    )
    request.served_tier = Tier.BATCH


def budget_waits_deliver(*, batch: int = 500) -> int:
    """Batch-class requests that waited for their budget's next period, now begun: each is put in
    line in its own place (its arrival), reserving in the new period — or waits for the one after,
    or is refused. Returns how many were put in line."""
    delivered = 0
    due = CompletionRequest.objects.filter(
        status=CompletionStatus.QUEUED, budget_wait_until__lte=timezone.now()
    ).select_related("api_key")
    for row in due.order_by("created_at")[:batch]:
        budgets = tokens_of(periods_now(budgets_of(api_key=row.api_key, group=row.group)))
        if not CompletionRequest.objects.filter(id=row.id, status=CompletionStatus.QUEUED).update(
            budgets=budgets, budget_wait_until=None
        ):
            continue
        row.budgets, row.budget_wait_until = budgets, None
        try:
            delivered += completion_request_deliver(request=row, waits_for_key=row.key_limited, first=True)
        except BudgetExceeded:
            pass  # ended, failed with the reason
    return delivered


def _refuse(request: CompletionRequest, exc: BudgetExceeded, *, key_took: bool) -> None:
    """A request its budget cannot take ends failed, before any line or call; `key_took`: a
    fail-fast key's line took its cost at submission, and gives it back."""
    if key_took:
        line_settle(line=key_line(request.api_key_id), request_id=str(request.id), mode=SettleMode.REFUND)
    completion_request_finish(
        request_id=request.id,
        from_status=CompletionStatus.QUEUED,
        status=CompletionStatus.FAILED,
        stream=request.stream,
        reply_to=request.reply_to,
        cost=Decimal(0),
        error={
            "message": str(exc),
            "type": "budget_exceeded",
            "reset_at": exc.reset_at,
            "retry_after": exc.retry_after,
            "transient": False,
        },
    )


def completion_request_dispatch(
    *, request: CompletionRequest, countdown: float | None = None, line: str | None = None
) -> None:
    """Publish a request's task: on its model's queue for its model's line (or none), or on the
    default queue for its key's line. Raises DispatchFailed when the broker cannot take it; the
    row is left queued for the outbox to deliver."""
    line = line or request.line
    try:
        run_publish(
            request_id=str(request.id),
            line=line,
            queue=line_queue(line) if line else request.queue_name,
            countdown=countdown,
        )
    except Exception as exc:
        logger.warning("request %s: could not publish its task (%s); it stays queued", request.id, exc)
        raise DispatchFailed(str(exc)) from exc


def completion_request_cancel(
    *, request: CompletionRequest, reason: str = "", retries_too: bool = False
) -> bool:
    """Cancel a request that has not started; it leaves its line. `reason` (why, when it was not
    the client's own doing) goes in its error. With `retries_too`, also one that is queued for
    another attempt. Returns False when it is running (or has ended)."""
    error = {"message": reason, "transient": False} if reason else None
    waiting = CompletionRequest.objects.filter(id=request.id, status=CompletionStatus.QUEUED)
    if not retries_too:
        waiting = waiting.filter(started_at__isnull=True)
    cancelled = waiting.update(status=CompletionStatus.CANCELLED, finished_at=timezone.now(), error=error)
    request.refresh_from_db()
    if cancelled:
        if request.key_limited:
            line_leave(line=key_line(request.api_key_id), request_id=str(request.id))
            line_settle(line=key_line(request.api_key_id), request_id=str(request.id), mode=SettleMode.REFUND)
        if request.line is not None:
            line_leave(line=request.line, request_id=str(request.id))
        _announce(
            str(request.id),
            CompletionStatus.CANCELLED,
            stream=request.stream,
            error=error,
            reply_to=request.reply_to,
            result={"error": error, "upstream_status": None, "queue_seconds": None, "response": None},
            budgets=request.budgets,
            cost=request.cost,
        )
    return bool(cancelled)


def completion_request_fall_back(
    *, request: CompletionRequest, group: ModelGroup, fallback: ModelGroup
) -> bool:
    """Move a request waiting in `group`'s line to `fallback`'s (a group with no healthy
    deployment), where it takes its place by arrival; False when it cannot go there (its key,
    its cost, its format) or is no longer waiting in `group`'s line."""
    served = (
        ServedModel.objects.select_related("provider", "group")
        .filter(provider__name=request.provider, name=request.model)
        .first()
    )
    if served is None:
        return False
    try:
        route = request_route(
            key_quota=key_quota_of(request.api_key),
            served_model=served,
            group=fallback,
            payload=request.payload,
        )
    except (ModelNotAllowed, CostExceedsLimit):
        return False
    if not line_leave(line=group.line, request_id=str(request.id)):
        return False  # started, cancelled or expired meanwhile
    moved = {
        "group": fallback.name,
        "deployments": route.mask,
        "fallback_from": group.name,
        "provider": route.first.provider.name,
        "model": route.first.name,
        "estimated_input_tokens": route.cost[0],
        "estimated_output_tokens": route.cost[1],
    }
    if not CompletionRequest.objects.filter(id=request.id, status=CompletionStatus.QUEUED).update(**moved):
        return False  # cancelled meanwhile (and it had left the line already)
    for name, value in moved.items():
        setattr(request, name, value)
    logger.info(
        "request %s: %s has no healthy deployment; its fallback %s serves it", request.id, group, fallback
    )
    line_enter(request=request, line=fallback.line, max_wait=remaining_wait(request))
    completion_request_dispatch(request=request)
    return True


def served_model_waiting_cancel(*, provider: str, model: str, reason: str) -> int:
    """Cancel, with `reason`, every request waiting for provider/model sent to it alone (it was
    disabled with "cancel", or deleted); how many."""
    waiting = CompletionRequest.objects.filter(
        status=CompletionStatus.QUEUED, provider=provider, model=model, group=""
    ).select_related("api_key")
    n = sum(
        completion_request_cancel(request=r, reason=reason, retries_too=True)
        for r in waiting.order_by("created_at")
    )
    if n:
        logger.info("%d request(s) waiting for %s/%s cancelled: %s", n, provider, model, reason)
    return n


def served_model_disable(*, served_model: ServedModel, waiting: str = "drain", by: str = "") -> int:
    """Stop serving `served_model` to new requests. `waiting`: what becomes of the requests
    already waiting for it — "drain" (the default: they are served, its queue consumed and its
    line watched until the last has ended) or "cancel" (they end cancelled, with the reason).
    Returns how many were cancelled."""
    if waiting not in ("drain", "cancel"):
        raise ValueError(f"waiting must be drain or cancel, not {waiting!r}")
    if served_model.enabled:
        served_model.enabled = False
        served_model.save()
    if waiting == "drain":
        return 0
    reason = f"Cancelled: {served_model} was disabled{f' ({by})' if by else ''}."
    return served_model_waiting_cancel(
        provider=served_model.provider.name, model=served_model.name, reason=reason
    )


def api_key_requests_cancel(*, api_key_id: int, reason: str) -> int:
    """Cancel every queued request of a key (a deactivated key's), retries included; how many."""
    waiting = CompletionRequest.objects.filter(api_key_id=api_key_id, status=CompletionStatus.QUEUED)
    return sum(
        completion_request_cancel(request=r, reason=reason, retries_too=True)
        for r in waiting.order_by("created_at")
    )


def api_key_deactivate(*, api_key: ApiKey, by: str) -> int:
    """Revoke a key: no new call is accepted (everywhere within BALANCER_REGISTRY_CACHE_SECONDS),
    none of its requests starts any more (the claim checks the key), and those waiting now end
    `cancelled` with the reason. Returns how many were cancelled. Requests accepted in the cache
    window are cancelled by the sweep (completions.maintenance)."""
    if api_key.is_active:
        api_key.is_active = False
        api_key.save(update_fields=["is_active"])
    return api_key_requests_cancel(api_key_id=api_key.pk, reason=revoked_reason(by))


def revoked_reason(by: str = "") -> str:
    return f"Cancelled: its API key was deactivated{f' ({by})' if by else ''}."


def completion_requests_expire(*, request_ids: list[str]) -> None:
    """Requests that waited in line past their max_wait (they have already left the line)."""
    flags = CompletionRequest.objects.filter(id__in=request_ids).values_list(
        "id", "stream", "key_limited", "api_key_id"
    )
    streams = {str(i) for i, stream, _, _ in flags if stream}
    for request_uuid, _, key_limited, api_key_id in flags:
        if key_limited:  # its key's reservation, if the key had let it through already
            line_settle(line=key_line(api_key_id), request_id=str(request_uuid), mode=SettleMode.REFUND)
    for request_id in request_ids:
        completion_request_finish(
            request_id=request_id,
            from_status=CompletionStatus.QUEUED,
            status=CompletionStatus.EXPIRED,
            stream=request_id in streams,
            error={"message": "The request waited in line longer than its max_wait.", "transient": False},
        )


def completion_request_finish(
    *,
    request_id: uuid.UUID | str,
    from_status: str | None,
    status: str,
    stream: bool | None = None,
    reply_to: str = "",
    queue_seconds: float | None = None,
    reply_text: str | None = None,
    pipe: Any = None,
    deployment: str = "",
    claim: str | None = None,
    **fields: Any,
) -> bool:
    """Move a request to a terminal state (compare-and-swap on `from_status`) and announce it.
    Every terminal state goes through here, so a streamed request's stream always gets its end
    entry (`stream`: whether it streams; None: read from the row). With `reply_to`, the result
    goes to that channel too, so the waiting web process need not read the row (`reply_text`:
    the response as the upstream encoded it, sent instead of encoding it again; `deployment`:
    the provider/model that answered). With `pipe`, the announcements join that Redis pipeline,
    which the caller executes. `claim`: only if the attempt of that fencing token still holds it."""
    ended = rows.end(
        request_id, from_status, claim=claim, status=status, finished_at=timezone.now(), **fields
    )
    if ended is None:
        return False
    logger.info(
        "request %s %s (upstream status %s, waited %s s)",
        request_id,
        status,
        fields.get("upstream_status") or "-",
        "-" if queue_seconds is None else f"{queue_seconds:.3f}",
    )
    if stream is None:
        stream = CompletionRequest.objects.filter(id=request_id, stream=True).exists()
    result = None
    if reply_to and not stream:
        result = {
            "error": fields.get("error"),
            "upstream_status": fields.get("upstream_status"),
            "queue_seconds": queue_seconds,
            "deployment": deployment,
            "cost": None if ended.cost is None else str(ended.cost),
        }
        if reply_text is None:
            result["response"] = fields.get("response")
    _announce(
        str(request_id),
        status,
        stream=stream,
        error=fields.get("error"),
        reply_to=reply_to,
        result=result,
        body=reply_text,
        pipe=pipe,
        budgets=ended.budgets,
        cost=ended.cost,
    )
    return True


def _announce(
    request_id: str,
    status: str,
    *,
    stream: bool,
    error: dict[str, Any] | None = None,
    reply_to: str = "",
    result: dict[str, Any] | None = None,
    body: str | None = None,
    pipe: Any = None,
    budgets: str = "",
    cost: Decimal | None = None,
) -> None:
    """A request reached `status`: end its stream (streamed requests), settle its budgets (its
    reservations replaced by its `cost`) and publish the event, in one round trip (the caller's
    `pipe`, when given). Never raises: a lost announcement costs a waiter only its wait (it
    re-reads the row at its deadline), a lost settlement is made by the sweep
    (completions.spend.budgets_reconcile)."""
    try:
        own = pipe is None
        target = get_redis().pipeline(transaction=False) if own else pipe
        if budgets:
            budgets_settle_in(target, request_id=request_id, budgets=budgets, cost=cost)
        if stream:
            stream_end(request_id, status, error, pipe=target, cost=cost)
        completion_event_publish(
            request_id=request_id, status=status, reply_to=reply_to, result=result, body=body, pipe=target
        )
        if own:
            target.execute()
    except Exception:
        logger.warning("could not announce that request %s is %s", request_id, status, exc_info=True)


def retry_countdown(*, attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter, never shorter than the upstream's retry-after."""
    cap = min(
        settings.BALANCER_RETRY_BACKOFF_MAX_SECONDS,
        settings.BALANCER_RETRY_BACKOFF_SECONDS * 2 ** (attempt - 1),
    )
    countdown = random.uniform(cap / 2, cap)
    if retry_after is not None:
        countdown = max(countdown, retry_after)
    return countdown


def remaining_wait(request: CompletionRequest) -> float | None:
    """What is left of a request's max_wait (None: it has none)."""
    if request.max_wait is None:
        return None
    return request.max_wait - (timezone.now() - request.created_at).total_seconds()


def completion_request_claim(
    *, request_id: str, token: str, deployment: ServedModel | None = None
) -> CompletionRequest | None:
    """queued → running (compare-and-swap), counting the attempt and writing its fencing `token`
    (every later write of the attempt carries it: rows.finish); returns the claimed row, or
    None when another delivery, a cancel or the end came first. Where the database can (SQLite
    3.35+, PostgreSQL) the update returns the row, so a claim is one statement. `deployment`:
    where a group's request goes this attempt (its provider and model are set in the same
    statement, and it is called with that model's name)."""
    now = timezone.now()
    route = (deployment.provider.name, deployment.name) if deployment is not None else None
    if rows.returning_supported():
        request = rows.claim(request_id, now, token, route)
    else:
        request = _claim_orm(request_id, now, token, route)
    if request is not None and deployment is not None:
        request.payload = {**request.payload, "model": deployment.name}
    return request


def _claim_orm(
    request_id: str, now: Any, token: str, route: tuple[str, str] | None
) -> CompletionRequest | None:
    routed = {"provider": route[0], "model": route[1]} if route else {}
    claimed = CompletionRequest.objects.filter(
        id=request_id, status=CompletionStatus.QUEUED, api_key__is_active=True
    ).update(
        status=CompletionStatus.RUNNING,
        attempts=F("attempts") + 1,
        started_at=Coalesce(F("started_at"), Value(now)),
        claimed_at=now,
        claim=token,
        **routed,
    )
    return CompletionRequest.objects.get(id=request_id) if claimed else None
