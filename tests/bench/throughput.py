"""Scenario `throughput` (see tests/bench/__init__.py for what it measures)."""

from __future__ import annotations

import sys
from typing import Any

from tests.bench.common import closed_run, plain_stack, throughput_row, warm_up


def scenario_throughput(
    clients: int = 64, seconds: float = 15, webs: int = 1, workers: int = 2
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Completions per second, and the per-request cost table."""
    with plain_stack(webs=webs, workers=workers, concurrency=100) as p:
        warm_up(p)
        result, usage = closed_run(p, clients, seconds)
    done = len(result.latencies)
    print(usage.detail(done), file=sys.stderr)
    row = {"web + worker processes": f"{webs} + {workers}", **throughput_row(result, clients)}
    return [row], [{"processes": f"{webs} + {workers}", **usage.per_request(done)}]
