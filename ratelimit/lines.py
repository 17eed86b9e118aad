"""Names of lines, and the checks a request meets before it joins one. Nothing here knows what a
request or a served model is: callers pass names, ids and costs."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from redis.exceptions import RedisError

from ratelimit import limiter
from ratelimit.models import KeyQuota, Quota
from ratelimit.names import (
    group_line,
    group_of_line,
    is_group_line,
    is_key_line,
    key_line,
    key_of_line,
    line_name,
)

__all__ = [
    "group_line",
    "group_of_line",
    "is_group_line",
    "is_key_line",
    "key_line",
    "key_of_line",
    "line_name",
]


def key_quota_of(api_key: Any) -> KeyQuota | None:
    """The key's quota, from the row loaded with the key when it was (see api_key_get_by_raw)."""
    try:
        quota: KeyQuota = api_key.quota
        return quota
    except KeyQuota.DoesNotExist:
        return None


def key_allows_model(*, key_quota: KeyQuota | None, served_model_id: int) -> bool:
    """Whether a key's quota lets it use a model. A restricted key may use exactly its allowed
    models — none when the list is empty — so deleting a model never widens what a key reaches."""
    if key_quota is None or not key_quota.restrict_models:
        return True
    allowed = key_quota.allowed_model_ids
    if allowed is None:  # a quota not loaded through api_key_get_by_raw
        allowed = key_quota.allowed_model_ids = frozenset(
            key_quota.allowed_models.values_list("pk", flat=True)
        )
    return served_model_id in allowed


def key_take(
    *, api_key_id: int, request_id: str, input_tokens: int, output_tokens: int, configured: bool = False
) -> float | None:
    """Fail-fast keys: take the cost now (None) or say how many seconds until it would fit.
    `configured`: as limiter.take's (raises LineLost)."""
    return limiter.take(
        key_line(api_key_id),
        request_id,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        lease_seconds=settings.BALANCER_KEY_HOLD_SECONDS,
        configured=configured,
    )


def key_rate_headers(*, api_key_id: int, key_quota: KeyQuota | None) -> dict[str, str]:
    """x-ratelimit-* headers describing the caller's own quota (as OpenAI names them)."""
    if key_quota is None or not key_quota.limited:
        return {}
    try:
        st = limiter.status(key_line(api_key_id), input_tokens=0, output_tokens=0)
    except RedisError:  # informational: an answer goes out without them while Redis is away
        return {}
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


def cost_over_capacity(
    *, quota: Quota | KeyQuota | None, input_tokens: int, output_tokens: int, owner: str = "the model's"
) -> str | None:
    """Why a request can never fit the buckets of `quota` (as the limiter runs them, margins
    included), or None when it can."""
    if quota is None:
        return None
    caps = quota.capacities()
    needs = {
        "tokens": input_tokens + output_tokens,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
    }
    advice = (
        "Lower max_tokens or split the request."
        if output_tokens
        else "Split the input into smaller requests."
    )
    for name, need in needs.items():
        cap = caps.get(name)
        if cap is not None and need > cap:
            return (
                f"This request needs an estimated {need} {name.replace('_', ' ')} "
                f"({input_tokens} input + {output_tokens} output reserved) but {owner} bucket holds at most "
                f"{cap:g} ({name}_per_minute over burst_seconds={quota.burst_seconds:g}, less its margin). "
                f"{advice}"
            )
    return None
