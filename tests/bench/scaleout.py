"""Scenario `scaleout` (see tests/bench/__init__.py for what it measures)."""

from __future__ import annotations

import time
from typing import Any

import redis

from ratelimit.limiter import KEY_NAMES, line_keys
from tests import loadgen
from tests.bench.common import over_limit, plain_stack, run_load, spread, warm_up


def scenario_scaleout(seconds: float = 15, clients: int = 128) -> list[dict[str, Any]]:
    """1 web + 1 worker against 2 + 2: unlimited throughput, then a model with a requests-per-
    minute limit below either's capacity, where the upstream's arrival log checks the limit."""
    rpm, burst = 9000, 1.0  # 150 requests per second, a bucket of 150
    rate = rpm / 60
    rows = []
    for webs, workers in ((1, 1), (2, 2)):
        quota = {"requests_per_minute": rpm, "burst_seconds": burst}
        with plain_stack(webs=webs, workers=workers, concurrency=100, limited=quota) as p:
            warm_up(p)
            per_web = clients // webs

            def load(h: str, port: int, d: bytes, per_web: int = per_web) -> Any:
                return loadgen.closed_loop(h, port, d, per_web, seconds)

            free = run_load(spread(p.targets(), load))
            time.sleep(2)  # the bucket refills
            start = time.monotonic()
            held = run_load(spread(p.targets(model="bench-limited"), load))
            arrivals = sorted(
                t for t, m in p.upstream_stats()["arrivals"] if m == "bench-limited" and t >= start
            )
            r = redis.Redis.from_url(p.s.redis_url, decode_responses=True)
            grant_log = r.lrange(line_keys("openai/bench-limited")[KEY_NAMES.index("grants")], 0, -1)
            grants = sorted(float(x.partition("@")[2]) for x in grant_log if not x.startswith("r"))
        rows.append(
            {
                "web + worker processes": f"{webs} + {workers}",
                "unlimited completions/s": round(len(free.latencies) / free.elapsed, 1),
                "unlimited errors": len(free.errors),
                "limited completions/s": round(len(held.latencies) / held.elapsed, 1),
                "limited errors": len(held.errors),
                "limit req/s": rate,
                "grants over the limit": over_limit(grants, rate, rate * burst, 0.0),
                "upstream arrivals over the limit": over_limit(arrivals, rate, rate * burst, 0.0),
                "... with 10 ms arrival jitter": over_limit(arrivals, rate, rate * burst, 0.01),
                "utilisation %": round(
                    100 * len(arrivals) / (rate * burst + rate * (arrivals[-1] - arrivals[0])), 1
                ),
            }
        )
    return rows
