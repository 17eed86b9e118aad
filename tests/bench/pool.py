"""Scenario `pool` (see tests/bench/__init__.py for what it measures)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from tests.bench.common import burst, peak_rss_mib, stack
from tests.live import Worker, wait_until


def scenario_pool(requests: int, latency: float) -> list[dict[str, Any]]:
    registry = {
        "providers": [
            {
                "name": "mock",
                "kind": "mock",
                "models": [{"name": "bench", "options": {"latency_ms": latency * 1000}}],
            }
        ]
    }
    body = {
        "provider": "mock",
        "model": "bench",
        "wait": 300,
        "payload": {"max_tokens": 16, "messages": [{"role": "user", "content": "benchmark"}]},
    }
    rows = []
    for pool in ("threads", "gevent"):
        with stack(registry) as s:
            worker = Worker(s.env, s.run_dir, concurrency=requests, pool=pool)
            worker.start()
            wait_until(lambda w=worker: w.ready(), 60, "worker to start", interval=0.2)
            try:
                # One warm-up request, so imports and connections are not measured.
                asyncio.run(burst(s.web.url, s.api_key, 1, body))
                elapsed, ok, errors = asyncio.run(burst(s.web.url, s.api_key, requests, body))
                assert worker.process is not None
                rows.append(
                    {
                        "pool": pool,
                        "requests": requests,
                        "upstream latency s": latency,
                        "wall s": round(elapsed, 2),
                        "req/s": round(ok / elapsed, 1),
                        "errors": len(errors),
                        "worker peak RSS MiB": round(peak_rss_mib(worker.process.pid), 1),
                        "web peak RSS MiB": round(peak_rss_mib(s.web.process.pid), 1)
                        if s.web.process
                        else None,
                    }
                )
                if errors:
                    print(f"{pool}: first errors: {errors[:5]}", file=sys.stderr)
            finally:
                worker.stop()
    return rows
