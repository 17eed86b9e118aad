"""Scenario `concurrency` (see tests/bench/__init__.py for what it measures)."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

import httpx
import redis

from ratelimit.limiter import KEY_NAMES, line_keys
from tests import loadgen
from tests.bench.common import HealthProbes, ReferenceServer, plain_stack, run_load, warm_up
from tests.live import wait_until


def scenario_concurrency(
    waiting: int = 5000, in_flight: int = 1000, latency_ms: float = 2000
) -> list[dict[str, Any]]:
    """`in_flight + waiting` clients at once on one web process, against a model allowed
    `in_flight` concurrent calls. The web submits a few hundred requests a second, so a 2 s call
    would end long before thousands could queue behind it: the first `in_flight` calls are held
    at the upstream until all the others wait in line (the moment memory is measured); then
    they are answered, and the waiting ones run, `in_flight` at a time, `latency_ms` each.
    Two workers of `in_flight / 2` threads."""
    from tests.live import free_port

    quota = {"max_concurrency": in_flight}
    workers = 2
    health_port = free_port()
    with (
        plain_stack(
            workers=workers,
            concurrency=in_flight // workers + 10,
            latency_ms=latency_ms,
            limited=quota,
            BALANCER_HEALTH_PORT=str(health_port),
        ) as p,
        ReferenceServer() as reference,
    ):
        warm_up(p)
        r = redis.Redis.from_url(p.s.redis_url, decode_responses=True)
        line_key = line_keys("openai/bench-limited")[KEY_NAMES.index("line")]
        before = p.upstream_stats()["requests"]
        held = p.targets(model="bench-limited", fake={"hold": True})[0]
        timed = p.targets(model="bench-limited", fake={"latency_ms": latency_ms})[0]
        snapshot: dict[str, Any] = {}

        async def run() -> tuple[loadgen.Result, loadgen.Result]:
            # Held until thousands are in line, which takes this machine up to two minutes.
            first = asyncio.create_task(loadgen.at_once(*held, count=in_flight, timeout=600))
            await asyncio.to_thread(
                wait_until, lambda: p.upstream_stats()["in_flight"] >= in_flight, 120, "calls in flight"
            )
            rest = asyncio.create_task(loadgen.at_once(*timed, count=waiting, timeout=600))
            probing = HealthProbes([p.webs[0].url, f"http://127.0.0.1:{health_port}", reference.url])
            await asyncio.to_thread(
                wait_until, lambda: r.zcard(line_key) >= waiting, 300, "requests waiting", interval=0.5
            )
            snapshot["health"] = probing.stop()
            snapshot["in flight"] = p.upstream_stats()["in_flight"]
            snapshot["waiting"] = r.zcard(line_key)
            snapshot["rss"] = p.rss_mib()
            await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{p.upstream_port}/release", timeout=30)
            return await first, await rest

        started = time.monotonic()
        first, rest = run_load(run())
        elapsed = time.monotonic() - started
        stats = p.upstream_stats()
        rss = p.rss_mib()
    errors = first.errors + rest.errors
    if errors:
        print(f"first errors: {errors[:3]}", file=sys.stderr)
    return [
        {
            "clients": waiting + in_flight,
            "in flight upstream": snapshot["in flight"],
            "waiting in line": snapshot["waiting"],
            "answered": len(first.latencies) + len(rest.latencies),
            "errors": len(errors),
            "upstream calls": stats["requests"] - before,
            "most in flight": stats["max_in_flight"],
            "run s": round(elapsed, 1),
            **{
                f"/health {where} {stat} ms while connecting": round(1000 * fn(took), 1)
                for where, took in zip(
                    ("main port", "probe port", "reference"), snapshot["health"], strict=True
                )
                for stat, fn in (("p50", statistics.median), ("max", max))
            },
            **{f"{name} RSS MiB": round(v) for name, v in snapshot["rss"].items()},
            "total RSS MiB": round(sum(snapshot["rss"].values())),
            "total peak RSS MiB": round(sum(rss.values())),
        }
    ]
