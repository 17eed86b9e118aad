"""Reads of the rate-limit layer: the state of one line, as /api/v1/queues and the admin show it."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from ratelimit import limiter
from ratelimit.models import KeyQuota, Quota


def line_statuses(
    lines: list[tuple[str, Quota | None]], input_tokens: int = 100
) -> dict[str, limiter.LineStatus]:
    """The limiter's state of many lines (each with its quota, or a group's line with its first
    deployment's), in one round trip, to pass to line_status or group_status as `st`."""
    found = limiter.statuses([(line, input_tokens, _output_tokens(quota)) for line, quota in lines])
    return {line: st for (line, _), st in zip(lines, found, strict=True)}


def line_status(
    *, line: str, quota: Quota | None, input_tokens: int = 100, st: limiter.LineStatus | None = None
) -> dict[str, Any]:
    """Waiting and in-flight counts, limits, bucket levels now, and the estimated wait of a new
    request costing `input_tokens` plus the quota's default output reservation (`st`: the
    limiter's state, read already by line_statuses)."""
    if st is None:
        st = limiter.status(line, input_tokens=input_tokens, output_tokens=_output_tokens(quota))
    return {
        "waiting": st.waiting,
        "in_flight": st.in_flight,
        **_buckets(quota, st.levels, st.limits_in_force),
        "estimated_wait_seconds": round(st.estimated_wait_seconds, 3),
        "counters": {"granted": st.granted, "wake_ups": st.wakes, "expired": st.expired},
    }


def group_status(
    *,
    line: str,
    quotas: dict[str, Quota | None],
    input_tokens: int = 100,
    st: limiter.LineStatus | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A group's line as line_status has it (its wait against its deployments' pooled rates),
    and each deployment's own state by id (`quotas`: each deployment's quota): in-flight
    requests, limits, bucket levels, cooldown, grants and recent latency."""
    if st is None:
        first = next(iter(quotas.values()), None)
        st = limiter.status(line, input_tokens=input_tokens, output_tokens=_output_tokens(first))
    line_part = {
        "waiting": st.waiting,
        "in_flight": st.in_flight,
        "estimated_wait_seconds": round(st.estimated_wait_seconds, 3),
        "counters": {"granted": st.granted, "wake_ups": st.wakes, "expired": st.expired},
        # Per client key: waiting now; over the last minute its share of the tokens granted, its
        # grants and its wait in line.
        "flows": [
            {
                "flow": f.flow,
                "waiting": f.waiting,
                "share_last_minute": round(f.share, 4),
                "granted_last_minute": f.granted,
                "queue_wait_p50_seconds": round(f.wait_p50, 3),
                "queue_wait_max_seconds": round(f.wait_max, 3),
            }
            for f in st.flows
        ],
    }
    deployments = {}
    for dep in st.deployments:
        quota = quotas.get(dep.id)
        deployments[dep.id] = {
            "in_flight": dep.in_flight,
            **_buckets(quota, dep.levels, dep.limits_in_force),
            "cooldown": {
                "seconds_left": round(dep.cooling_seconds, 3),
                "failures_in_a_row": dep.strikes,
                "last_fault": dep.fault or None,
            },
            "granted": dep.granted,
            "latency_seconds": None if dep.latency_seconds is None else round(dep.latency_seconds, 3),
        }
    return line_part, deployments


def _output_tokens(quota: Quota | None) -> int:
    return (quota.default_output_tokens if quota else None) or settings.BALANCER_DEFAULT_OUTPUT_TOKENS


def key_line_status(*, key_quota: KeyQuota, st: limiter.LineStatus) -> dict[str, Any]:
    """A client key's own line (`st`, read by line_statuses): requests waiting in it, its
    buckets against their sizes, its limits, and what happens over them."""
    return {
        "waiting": st.waiting,
        "buckets": _bucket_levels(st.levels, key_quota.capacities()),
        "limits_in_force_per_minute": {
            k: v
            for k, v in (("requests", key_quota.requests_per_minute), ("tokens", key_quota.tokens_per_minute))
            if v
        },
        "fail_fast": key_quota.fail_fast,
    }


def _bucket_levels(
    levels: dict[str, float | None], capacities: dict[str, float], sizes: dict[str, float] | None = None
) -> dict[str, Any]:
    """Each bucket's level, its capacity as the limiter runs it (margins applied) and, with
    `sizes`, its size as configured."""
    out = {}
    for name, level in levels.items():
        if level is None:
            continue
        out[name] = {"level": round(level, 3), "capacity": capacities.get(name)}
        if sizes is not None:
            out[name]["size"] = sizes.get(name)
    return out


def _buckets(
    quota: Quota | None, levels: dict[str, float | None], in_force: dict[str, float | None]
) -> dict[str, Any]:
    return {
        "limits": {f: getattr(quota, f) for f in Quota.LIMIT_FIELDS} if quota else None,
        "buckets": _bucket_levels(
            levels, quota.capacities() if quota else {}, quota.configured_sizes() if quota else {}
        ),
        # What the buckets enforce now (margins applied): the quota, or a lower limit the
        # provider reported.
        "limits_in_force_per_minute": {k: v for k, v in in_force.items() if v is not None},
    }
