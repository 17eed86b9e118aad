"""The last hour, minute by minute, per deployment (provider/model): upstream calls, tokens, 429s,
other errors, spend (micro-dollars), calls in a cheaper tier and what they saved, and queue waits. The dashboard draws its charts and percentiles from it.

Workers add to one Redis hash per minute in the pipeline that already records the attempt
(metrics.record_attempt), so it costs no round trip; each hash expires after two hours. The
Prometheus counters in `balancer:metrics` only ever grow, which is what a scraper wants; this is
what a person watching a queue drain wants: what happened in each of the last sixty minutes.

A minute is written while it is the current one (a call is counted when it ends), so the ones
before it are settled: each web process keeps them, as columns, and reads only the newest
minutes from Redis on every look (an open dashboard looks every 1.5 s).
"""

from __future__ import annotations

import threading
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
# The counts of a minute, as fields "<count>\t<model>" of its hash.
COUNTS = ("calls", "429", "errors", "input", "output", "spend", "cheap", "saved")
# Minutes read again on every look: the current one, and those a call still running on a worker
# whose clock is a little behind could add to.
FRESH_MINUTES = 3
# Queue-wait bins are kept for this many of the newest minutes (the dashboard's percentiles).
WAIT_MINUTES = 5


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
    spend_micro: int = 0,
    cheap: bool = False,
    saved_micro: int = 0,
) -> None:
    """Count one upstream call of `model` in its minute, as commands of the caller's pipeline;
    `cheap`: sent in a cheaper tier (flex, batch), which saved `saved_micro`."""
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
    if spend_micro:
        pipe.hincrby(key, SEP.join(("spend", model)), spend_micro)
    if cheap:
        pipe.hincrby(key, SEP.join(("cheap", model)), 1)
    if saved_micro:
        pipe.hincrby(key, SEP.join(("saved", model)), saved_micro)
    if queue_seconds is not None:
        le = next((str(b) for b in WAIT_BOUNDS if queue_seconds <= b), "+Inf")
        pipe.hincrby(key, SEP.join(("wait", model, le)), 1)
    pipe.expire(key, KEEP_SECONDS)


@dataclass
class Series:
    """One deployment's minutes, oldest first: a column per count, and the queue-wait bins of the
    newest WAIT_MINUTES minutes (oldest first)."""

    counts: dict[str, list[int]]
    waits: list[dict[str, int]] = field(default_factory=list)

    @classmethod
    def empty(cls, minutes: int) -> Series:
        return cls({c: [0] * minutes for c in COUNTS}, [{} for _ in range(min(WAIT_MINUTES, minutes))])

    @property
    def calls(self) -> list[int]:
        return self.counts["calls"]

    @property
    def rate_limited(self) -> list[int]:
        return self.counts["429"]

    @property
    def errors(self) -> list[int]:
        return self.counts["errors"]

    @property
    def tokens(self) -> list[int]:
        return [i + o for i, o in zip(self.counts["input"], self.counts["output"], strict=True)]


def _parse(raw: dict[str, str]) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """One minute's hash: its counts and its wait bins, by model."""
    counts: dict[str, dict[str, int]] = {}
    waits: dict[str, dict[str, int]] = {}
    for name, value in raw.items():
        kind, _, rest = name.partition(SEP)
        if kind == "wait":
            model, _, le = rest.partition(SEP)
            waits.setdefault(model, {})[le] = int(value)
        elif kind in COUNTS:
            counts.setdefault(rest, {})[kind] = int(value)
    return counts, waits


class _Settled:
    """The settled minutes of the window a process last read, as columns per model."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.first = 0  # the window's first minute
        self.minutes = 0  # how many settled minutes it holds
        self.counts: dict[str, dict[str, list[int]]] = {}
        # The wait bins of the newest settled minutes: minute -> model -> bins.
        self.waits: dict[int, dict[str, dict[str, int]]] = {}

    def advance(self, first: int, minutes: int) -> None:
        """Hold the `minutes` settled minutes from `first` on: keep those held already, read the
        others (normally the one that just settled) from Redis."""
        held = range(self.first, self.first + self.minutes)
        wanted = range(first, first + minutes)
        missing = [m for m in wanted if m not in held]
        pipe = get_redis().pipeline(transaction=False)
        for m in missing:
            pipe.hgetall(f"{PREFIX}{m}")
        parsed = dict(zip(missing, map(_parse, pipe.execute()), strict=True))
        models = set(self.counts) | {model for counts, _ in parsed.values() for model in counts}
        columns: dict[str, dict[str, list[int]]] = {}
        for model in models:
            old = self.counts.get(model)
            cols = {}
            for c in COUNTS:
                values = []
                for m in wanted:
                    if m in parsed:
                        values.append(parsed[m][0].get(model, {}).get(c, 0))
                    else:
                        values.append(old[c][m - self.first] if old else 0)
                cols[c] = values
            if any(any(v) for v in cols.values()):
                columns[model] = cols
        self.counts = columns
        for m, (_, waits) in parsed.items():
            self.waits[m] = waits
        keep_from = first + minutes - WAIT_MINUTES
        self.waits = {m: w for m, w in self.waits.items() if keep_from <= m < first + minutes}
        self.first, self.minutes = first, minutes


_settled = _Settled()


def last_hour(now: float | None = None, minutes: int = 61) -> tuple[int, dict[str, Series]]:
    """The last `minutes` minutes, oldest first, the current (partial) minute last: the current
    minute's number, and each deployment's series (only deployments with a call in them)."""
    current = minute_of(time.time() if now is None else now)
    first = current - minutes + 1
    fresh = list(range(max(first, current - FRESH_MINUTES + 1), current + 1))
    settled = len(range(first, fresh[0]))
    with _settled.lock:
        if (_settled.first, _settled.minutes) != (first, settled):
            _settled.advance(first, settled)
        held = {model: {c: list(v) for c, v in cols.items()} for model, cols in _settled.counts.items()}
        held_waits = [_settled.waits.get(m, {}) for m in range(fresh[0] - WAIT_MINUTES, fresh[0])]
    pipe = get_redis().pipeline(transaction=False)
    for m in fresh:
        pipe.hgetall(f"{PREFIX}{m}")
    latest = [_parse(raw) for raw in pipe.execute()]
    out: dict[str, Series] = {}
    for model in set(held) | {model for counts, _ in latest for model in counts}:
        cols = held.get(model) or {c: [0] * settled for c in COUNTS}
        for counts, _ in latest:
            mine = counts.get(model, {})
            for c in COUNTS:
                cols[c].append(mine.get(c, 0))
        waits = [w.get(model, {}) for w in held_waits] + [w.get(model, {}) for _, w in latest]
        out[model] = Series(cols, waits[-min(WAIT_MINUTES, minutes) :])
    return current, out


def percentile(bins: Iterable[dict[str, int]], q: float) -> float | None:
    """The `q` quantile (0–1) of the queue waits counted in `bins` (one dict of counts per
    minute, by upper bound), interpolated within the bin it falls in (None: no waits counted).
    Above the last bound it reports the last bound."""
    counts: dict[str, int] = {}
    for minute in bins:
        for le, n in minute.items():
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
