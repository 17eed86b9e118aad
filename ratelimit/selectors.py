"""Reads of the rate-limit layer: the state of one line, as /api/v1/queues and the admin show it."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from ratelimit import limiter
from ratelimit.models import Quota


def line_status(*, line: str, quota: Quota | None, input_tokens: int = 100) -> dict[str, Any]:
    """Waiting and in-flight counts, limits, bucket levels now, and the estimated wait of a new
    request costing `input_tokens` plus the quota's default output reservation."""
    output_tokens = (
        quota.default_output_tokens if quota else None
    ) or settings.BALANCER_DEFAULT_OUTPUT_TOKENS
    st = limiter.status(line, input_tokens=input_tokens, output_tokens=output_tokens)
    capacities = quota.capacities() if quota else {}
    return {
        "waiting": st.waiting,
        "in_flight": st.in_flight,
        "limits": {f: getattr(quota, f) for f in Quota.LIMIT_FIELDS} if quota else None,
        "buckets": {
            name: {"level": round(level, 3), "capacity": capacities.get(name)}
            for name, level in st.levels.items()
            if level is not None
        },
        # What the buckets enforce now (margins applied): the quota, or a lower limit the
        # provider reported.
        "limits_in_force_per_minute": {k: v for k, v in st.limits_in_force.items() if v is not None},
        "estimated_wait_seconds": round(st.estimated_wait_seconds, 3),
        "counters": {"granted": st.granted, "wake_ups": st.wakes, "expired": st.expired},
    }
