"""Scenario `isolation` (see tests/bench/__init__.py for what it measures)."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from tests import loadgen
from tests.bench.common import cpu_seconds, plain_stack, run_load, warm_up


def scenario_isolation(flood: int = 150, latency_ms: float = 5000, probes: int = 20) -> list[dict[str, Any]]:
    """Slow models flooded, and another model's requests meanwhile: `flood` calls of 5 s to each
    of 1, 2 or 3 unlimited models at once on one worker of 100 threads, then `probes` requests,
    one after the other, to "bench-limited" (a generous quota: another model, nothing more).
    One slow model with the share bound off (BALANCER_WORKER_MODEL_SHARE=1) and on (0.5); two
    and three slow models with the reserve off (BALANCER_WORKER_RESERVED_SHARE=0) and on (0.2,
    the default); in turns, twice: the probes' time, and the worker's CPU while the flood is
    served (what returning tasks cost)."""
    configs = [
        (1, {"BALANCER_WORKER_MODEL_SHARE": "1", "BALANCER_WORKER_RESERVED_SHARE": "0"}),
        (1, {"BALANCER_WORKER_MODEL_SHARE": "0.5", "BALANCER_WORKER_RESERVED_SHARE": "0.2"}),
        (2, {"BALANCER_WORKER_MODEL_SHARE": "0.5", "BALANCER_WORKER_RESERVED_SHARE": "0"}),
        (2, {"BALANCER_WORKER_MODEL_SHARE": "0.5", "BALANCER_WORKER_RESERVED_SHARE": "0.2"}),
        (3, {"BALANCER_WORKER_MODEL_SHARE": "0.5", "BALANCER_WORKER_RESERVED_SHARE": "0"}),
        (3, {"BALANCER_WORKER_MODEL_SHARE": "0.5", "BALANCER_WORKER_RESERVED_SHARE": "0.2"}),
    ]
    rows = []
    for slow_models, env in configs * 2:
        names = ["bench-plain", *(f"bench-slow-{n}" for n in range(2, slow_models + 1))]
        with plain_stack(
            workers=1, concurrency=100, limited={"max_concurrency": 1000}, more_models=tuple(names[1:]), **env
        ) as p:
            warm_up(p)
            slow = [p.targets(model=name, fake={"latency_ms": latency_ms})[0] for name in names]
            quick = p.targets(model="bench-limited")[0]
            worker_pid = p.workers[0].process.pid if p.workers[0].process else 0

            flooded, took, cpu, elapsed = run_load(_flood_and_probe(slow, quick, flood, probes, worker_pid))
        rows.append(
            {
                "slow models": slow_models,
                "model share": env["BALANCER_WORKER_MODEL_SHARE"],
                "reserve": env["BALANCER_WORKER_RESERVED_SHARE"],
                "other model p50 ms": round(1000 * statistics.median(took)),
                "other model max ms": round(1000 * max(took)),
                "flood answered": sum(len(f.latencies) for f in flooded),
                "flood errors": sum(len(f.errors) for f in flooded),
                "flood done s": round(elapsed, 1),
                "worker CPU s": round(cpu, 2),
            }
        )
    return rows


async def _flood_and_probe(
    slow: list[tuple[str, int, bytes]],
    quick: tuple[str, int, bytes],
    flood: int,
    probes: int,
    worker_pid: int,
) -> tuple[list[loadgen.Result], list[float], float, float]:
    """The floods at once; one second later the probes, one after the other."""
    cpu0 = cpu_seconds(worker_pid)
    started = time.monotonic()
    flooding = [asyncio.create_task(loadgen.at_once(*target, count=flood)) for target in slow]
    await asyncio.sleep(1.0)  # the floods are in
    took = []
    for _ in range(probes):
        one = await loadgen.at_once(*quick, count=1)
        took.append(one.latencies[0] if one.latencies else float("nan"))
    flooded = [await f for f in flooding]
    return flooded, took, cpu_seconds(worker_pid) - cpu0, time.monotonic() - started
