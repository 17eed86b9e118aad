"""The last hour, minute by minute, per deployment (provider/model): upstream calls, tokens, 429s,
other errors and queue waits. The dashboard draws its charts and percentiles from it.

Workers add to one Redis hash per minute in the pipeline that already records the attempt
(metrics.record_attempt), so it costs no round trip; each hash expires after two hours. The
Prometheus counters in `balancer:metrics` only ever grow, which is what a scraper wants; this is
what a person watching a queue drain wants: what happened in each of the last sixty minutes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from balancer_project.redis_conn import get_redis

PREFIX = "balancer:minute:"
SEP = "\t"
KEEP_SECONDS = 7200
# The status metrics give a call the client abandoned: not the upstream's error.
CLIENT_GONE = 499
# Upper bounds (seconds) of the queue-wait bins, mostly 1.5x apart: a percentile read off them
# (interpolated within its bin) is off by less than its bin's width. A wait above the last
# falls in "+Inf".
WAIT_BOUNDS = (
    0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0,
    60.0, 90.0, 120.0, 180.0, 300.0, 600.0,
)  # fmt: skip


def minute_of(at: float) -> int:
    return int(at // 60)


def record(
    pipe: Any,
    *,
    model: str,
    status: int | None,
    input_tokens: int | None,
    output_tokens: int | None,
    queue_seconds: float | None,
    at: float | None = None,
) -> None:
    """Count one upstream call of `model` in its minute, as commands of the caller's pipeline."""
    key = f"{PREFIX}{minute_of(time.time() if at is None else at)}"
    pipe.hincrby(key, SEP.join(("calls", model)), 1)
    if status == 429:
        pipe.hincrby(key, SEP.join(("429", model)), 1)
    elif status is None or (status >= 400 and status != CLIENT_GONE):
        pipe.hincrby(key, SEP.join(("errors", model)), 1)
    if input_tokens:
        pipe.hincrby(key, SEP.join(("input", model)), input_tokens)
    if output_tokens:
        pipe.hincrby(key, SEP.join(("output", model)), output_tokens)
    if queue_seconds is not None:
        le = next((str(b) for b in WAIT_BOUNDS if queue_seconds <= b), "+Inf")
        pipe.hincrby(key, SEP.join(("wait", model, le)), 1)
    pipe.expire(key, KEEP_SECONDS)


@dataclass
class Minute:
    """One deployment's minute."""

    calls: int = 0
    rate_limited: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    waits: dict[str, int] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


_FIELDS = {
    "calls": "calls",
    "429": "rate_limited",
    "errors": "errors",
    "input": "input_tokens",
    "output": "output_tokens",
}


def last_hour(now: float | None = None, minutes: int = 60) -> tuple[int, dict[str, list[Minute]]]:
    """The last `minutes` minutes, oldest first, the current (partial) minute last: the current
    minute's number, and each deployment's minutes (only deployments that had a call)."""
    current = minute_of(time.time() if now is None else now)
    numbers = list(range(current - minutes + 1, current + 1))
    pipe = get_redis().pipeline(transaction=False)
    for n in numbers:
        pipe.hgetall(f"{PREFIX}{n}")
    series: dict[str, list[Minute]] = {}
    for i, raw in enumerate(pipe.execute()):
        for name, value in raw.items():
            kind, _, rest = name.partition(SEP)
            model, _, le = rest.partition(SEP)
            minutes_of = series.get(model)
            if minutes_of is None:
                minutes_of = series[model] = [Minute() for _ in numbers]
            minute = minutes_of[i]
            if kind == "wait":
                minute.waits[le] = minute.waits.get(le, 0) + int(value)
            elif kind in _FIELDS:
                setattr(minute, _FIELDS[kind], getattr(minute, _FIELDS[kind]) + int(value))
    return current, series


def percentile(minutes: Iterable[Minute], q: float) -> float | None:
    """The `q` quantile (0–1) of the queue waits counted in `minutes`, interpolated within the bin
    it falls in (None: no waits counted). Above the last bound it reports the last bound."""
    counts: dict[str, int] = {}
    for m in minutes:
        for le, n in m.waits.items():
            counts[le] = counts.get(le, 0) + n
    total = sum(counts.values())
    if not total:
        return None
    rank = q * total
    below, lower = 0, 0.0
    for bound in WAIT_BOUNDS:
        n = counts.get(str(bound), 0)
        if n and below + n >= rank:
            return lower + (bound - lower) * max(0.0, rank - below) / n
        below += n
        lower = bound
    return WAIT_BOUNDS[-1]
