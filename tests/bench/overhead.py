"""Scenario `overhead` (see tests/bench/__init__.py for what it measures)."""

from __future__ import annotations

import sys
from typing import Any

from tests import loadgen
from tests.bench.common import percentile, plain_stack, run_load, spread, warm_up


def scenario_overhead() -> list[dict[str, Any]]:
    rows = []
    with plain_stack(concurrency=100) as p:
        warm_up(p)
        for rate in (50, 200):
            base = run_load(loadgen.open_loop(*p.direct(), rate=rate, seconds=10))
            via = run_load(
                spread(p.targets(), lambda h, port, d, rate=rate: loadgen.open_loop(h, port, d, rate, 10))
            )
            rows.append(
                {
                    "rate req/s": rate,
                    "requests": len(via.latencies) + len(via.errors),
                    "errors": len(via.errors) + len(base.errors),
                    "direct p50 ms": round(1000 * percentile(base.latencies, 0.5), 1),
                    "direct p99 ms": round(1000 * percentile(base.latencies, 0.99), 1),
                    "balancer p50 ms": round(1000 * percentile(via.latencies, 0.5), 1),
                    "balancer p99 ms": round(1000 * percentile(via.latencies, 0.99), 1),
                    "added p50 ms": round(
                        1000 * (percentile(via.latencies, 0.5) - percentile(base.latencies, 0.5)), 1
                    ),
                    "added p99 ms": round(
                        1000 * (percentile(via.latencies, 0.99) - percentile(base.latencies, 0.99)), 1
                    ),
                }
            )
            if via.errors:
                print(f"first errors: {via.errors[:3]}", file=sys.stderr)
    return rows
