"""The rate-limit layer as the completions pipeline uses it: quotas into Redis, requests into
their model's line, grants, settlements and wake-ups."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.conf import settings

from ratelimit import limiter
from ratelimit.limiter import Wake
from ratelimit.models import KeyQuota, Quota

if TYPE_CHECKING:
    from completions.models import CompletionRequest, ServedModel

logger = logging.getLogger(__name__)

# A pending wake-up this late is presumed lost, and the periodic watch wakes the head again.
WAKE_GRACE_SECONDS = 2.0


def line_name(provider: str, model: str) -> str:
    return f"{provider}/{model}"


def key_line(api_key_id: int) -> str:
    """The line of a client key with a rate quota; its requests pass it before their model's line."""
    return f"key:{api_key_id}"


def is_key_line(line: str) -> bool:
    return line.startswith("key:")


def wake_publish(*, line: str, wake: Wake | None) -> None:
    """Publish the wake-up of a line's head: a task on the model's own queue, with a countdown."""
    if wake is None:
        return
    from completions.tasks import wake_line

    wake_line.apply_async(
        kwargs={"line": line},
        argsrepr="()",
        kwargsrepr=repr({"line": line}),
        queue=line_queue(line),
        # Countdowns stay far below the Redis visibility_timeout (README: "Queueing").
        countdown=min(wake.countdown, settings.BALANCER_MAX_COUNTDOWN_SECONDS) or None,
    )


def line_queue(line: str) -> str:
    """Where a line's tasks go: a model's own queue; key lines on the default queue (their tasks
    only move requests on to their model's line)."""
    if is_key_line(line):
        return str(settings.CELERY_TASK_DEFAULT_QUEUE)
    from completions.models import queue_name

    provider, model = line.split("/", 1)
    return queue_name(provider, model)


def quota_get(*, served_model: ServedModel) -> Quota | None:
    """A model's quota (from the registry cache)."""
    from completions.registry_cache import registry_cache

    return registry_cache.get(
        ("quota", served_model.pk),
        lambda: Quota.objects.filter(served_model=served_model).first(),
        keep_empty=True,
    )


def key_allows_model(*, key_quota: KeyQuota | None, served_model: ServedModel) -> bool:
    """Whether a key's quota lets it use a model (no list of allowed models: every model)."""
    if key_quota is None:
        return True
    allowed = getattr(key_quota, "allowed_model_ids", None)
    if allowed is None:  # a quota not loaded through api_key_get_by_raw
        allowed = key_quota.allowed_model_ids = frozenset(
            key_quota.allowed_models.values_list("pk", flat=True)
        )
    return not allowed or served_model.pk in allowed


def quota_sync(*, served_model: ServedModel, quota: Quota | None, wake: bool = True) -> None:
    """Put a model's quota in force on every process (they read it from Redis on every check),
    and wake its line: raised limits may let the head start now."""
    line = line_name(served_model.provider.name, served_model.name)
    limits = quota.limits() if quota is not None else None
    if limits is not None:
        limits["lease"] = served_model.provider.timeout_seconds + settings.BALANCER_LEASE_MARGIN_SECONDS
    limiter.configure(line, limits)
    if wake:
        w, expired = limiter.watch(line, grace=-1)
        _expire(expired)
        wake_publish(line=line, wake=w)


def lines_tend() -> None:
    """Periodic care, run by every worker: re-write every quota into Redis (Redis may have lost
    them, or a save may have happened where Redis was unreachable), then watch every limited line:
    expire passed deadlines, free lost slots, re-wake a head whose wake-up was lost."""
    from completions.models import ServedModel

    quotas = {q.served_model_id: q for q in Quota.objects.all()}
    for served in ServedModel.objects.select_related("provider"):
        quota_sync(served_model=served, quota=quotas.get(served.id), wake=False)
        # Unlimited models too: one whose quota was just removed may still have a line to drain.
        line_watch(line=line_name(served.provider.name, served.name))
    for key_quota in KeyQuota.objects.all():
        key_quota_sync(key_quota=key_quota, wake=False)
        line_watch(line=key_line(key_quota.api_key_id))


def key_quota_of(api_key: Any) -> KeyQuota | None:
    """The key's quota, from the row loaded with the key when it was (see api_key_get_by_raw)."""
    try:
        return api_key.quota  # type: ignore[no-any-return]
    except KeyQuota.DoesNotExist:
        return None


def key_quota_sync(*, key_quota: KeyQuota, deleted: bool = False, wake: bool = True) -> None:
    line = key_line(key_quota.api_key_id)
    limiter.configure(line, key_quota.limits() if key_quota.limited and not deleted else None)
    if wake:
        w, expired = limiter.watch(line, grace=-1)
        _expire(expired)
        wake_publish(line=line, wake=w)


def key_take(*, api_key_id: int, request_id: str, input_tokens: int, output_tokens: int) -> float | None:
    """Fail-fast keys: take the cost now (None) or say how many seconds until it would fit."""
    return limiter.take(
        key_line(api_key_id),
        request_id,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        lease_seconds=settings.BALANCER_DEFAULT_LEASE_SECONDS,
    )


def key_rate_headers(*, api_key_id: int, key_quota: KeyQuota | None) -> dict[str, str]:
    """x-ratelimit-* headers describing the caller's own quota (as OpenAI names them)."""
    if key_quota is None or not key_quota.limited:
        return {}
    st = limiter.status(key_line(api_key_id), input_tokens=0, output_tokens=0)
    headers = {}
    for name, per_minute, level in (
        ("requests", key_quota.requests_per_minute, st.levels["requests"]),
        ("tokens", key_quota.tokens_per_minute, st.levels["tokens"]),
    ):
        if not per_minute or level is None:
            continue
        capacity = per_minute * key_quota.burst_seconds / 60
        headers[f"x-ratelimit-limit-{name}"] = str(per_minute)
        headers[f"x-ratelimit-remaining-{name}"] = str(max(0, int(level)))
        headers[f"x-ratelimit-reset-{name}"] = f"{max(0.0, capacity - level) / (per_minute / 60):.3f}s"
    return headers


def request_cost(
    *, served_model: ServedModel, quota: Quota | None, payload: dict[str, Any]
) -> tuple[int, int]:
    """(input tokens, output tokens) reserved for a request before it runs."""
    from completions.tokens import estimate_input_tokens, requested_output_cap

    default_output = (
        quota.default_output_tokens if quota else None
    ) or settings.BALANCER_DEFAULT_OUTPUT_TOKENS
    return (
        estimate_input_tokens(payload, kind=served_model.provider.kind, model=served_model.name),
        requested_output_cap(payload) or default_output,
    )


def cost_over_capacity(
    *, quota: Quota | KeyQuota | None, input_tokens: int, output_tokens: int, owner: str = "the model's"
) -> str | None:
    """Why a request can never fit the buckets of `quota`, or None when it can."""
    if quota is None:
        return None
    caps = quota.capacities()
    needs = {
        "tokens": input_tokens + output_tokens,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
    }
    for name, need in needs.items():
        cap = caps.get(name)
        if cap is not None and need > cap:
            return (
                f"This request needs an estimated {need} {name.replace('_', ' ')} "
                f"({input_tokens} input + {output_tokens} output reserved) but {owner} bucket holds at most "
                f"{cap:g} ({name}_per_minute over burst_seconds={quota.burst_seconds:g}). "
                "Lower max_tokens or split the request."
            )
    return None


def request_enqueue(
    *,
    request: CompletionRequest,
    line: str | None,
    max_wait: float | None,
    ticket: int | None = None,
    delay: float | None = None,
) -> None:
    """Give a request its ticket at the end of `line` (called after commit) or, for a request that
    failed transiently, its own `ticket` back, to start no sooner than `delay` s from now."""
    assert line is not None
    _, _, wake = limiter.enqueue(
        line,
        str(request.id),
        input_tokens=request.estimated_input_tokens,
        output_tokens=request.estimated_output_tokens,
        max_wait=max_wait,
        ticket=ticket,
        delay=delay,
    )
    wake_publish(line=line, wake=wake)


def request_acquire(*, line: str, request_id: str | None) -> str | None:
    """Ask to start `request_id` (or, for a wake-up, the head). Returns the id that may start, or
    None. Requeues a wake-up with the exact countdown when the head must wait."""
    grant = limiter.acquire(line, request_id, lease_seconds=settings.BALANCER_DEFAULT_LEASE_SECONDS)
    _expire(grant.expired)
    wake_publish(line=line, wake=grant.wake)
    return grant.request_id if grant.outcome == "go" else None


def request_settle(
    *, line: str, request_id: str, mode: str, input_tokens: int = 0, output_tokens: int = 0
) -> int | None:
    """Return the request's slot and settle its tokens; returns its ticket (None if already settled)."""
    ticket, wake = limiter.settle(
        line, request_id, mode=mode, input_tokens=input_tokens, output_tokens=output_tokens
    )
    wake_publish(line=line, wake=wake)
    return ticket


def request_settle_queue(
    pipe: Any, *, line: str, request_id: str, mode: str, input_tokens: int = 0, output_tokens: int = 0
) -> Callable[[list[Any]], int | None]:
    """`request_settle` as part of the caller's pipeline; returns the function that, given the
    pipeline's results, publishes the wake-up and returns the ticket."""
    index = len(pipe)
    read = limiter.settle_queue(
        pipe, line, request_id, mode=mode, input_tokens=input_tokens, output_tokens=output_tokens
    )

    def done(replies: list[Any]) -> int | None:
        ticket, wake = read(replies[index])
        wake_publish(line=line, wake=wake)
        return ticket

    return done


def request_leave(*, line: str, request_id: str) -> None:
    _, wake = limiter.leave(line, request_id)
    wake_publish(line=line, wake=wake)


def line_adapt(*, line: str, headers: dict[str, str], pipe: Any = None) -> Callable[[list[Any]], None]:
    """Follow the limits the provider reports in its rate-limit headers: a lower one than the
    quota is used instead while it keeps being reported, and the quota is back once it is not.
    With `pipe`, queued in the caller's pipeline; returns the function that, given the
    pipeline's results, checks its reply."""
    from completions.providers.base import reported_limits

    reported = reported_limits(headers)
    if not reported:
        return lambda replies: None
    if pipe is None:
        limiter.adapt(line, reported)
        return lambda replies: None
    index = len(pipe)
    read = limiter.adapt_queue(pipe, line, reported)

    def done(replies: list[Any]) -> None:
        read(replies[index])

    return done


def line_watch(*, line: str) -> None:
    wake, expired = limiter.watch(line, grace=WAKE_GRACE_SECONDS)
    _expire(expired)
    wake_publish(line=line, wake=wake)


def _expire(request_ids: list[str]) -> None:
    if not request_ids:
        return
    from completions.services import completion_requests_expire

    completion_requests_expire(request_ids=request_ids)
