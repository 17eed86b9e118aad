"""Scenario `waiting` (see tests/bench/__init__.py for what it measures)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from tests.bench.common import peak_rss_mib, stack
from tests.live import Worker, wait_until


def scenario_waiting(clients: int) -> list[dict[str, Any]]:
    registry = {
        "providers": [
            {
                "name": "mock",
                "kind": "mock",
                "models": [
                    {"name": "bench-wait", "options": {"latency_ms": 1000}, "quota": {"max_concurrency": 50}}
                ],
            }
        ]
    }
    body = {"model": "bench-wait", "max_tokens": 4, "messages": [{"role": "user", "content": "wait"}]}
    with stack(registry) as s:
        worker = Worker(s.env, s.run_dir, concurrency=60)
        worker.start()
        wait_until(worker.ready, 60, "worker to start", interval=0.2)
        assert s.web.process is not None
        base_rss = peak_rss_mib(s.web.process.pid)
        try:

            async def run() -> tuple[float, list[str]]:
                limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
                headers = {"Authorization": f"Bearer {s.api_key}"}
                async with httpx.AsyncClient(
                    base_url=s.web.url, headers=headers, timeout=600, limits=limits
                ) as client:

                    async def one() -> str:
                        try:
                            r = await client.post("/v1/chat/completions", json=body)
                        except httpx.HTTPError as exc:
                            return exc.__class__.__name__
                        return "ok" if r.status_code == 200 else f"HTTP {r.status_code}"

                    started = time.monotonic()
                    results = await asyncio.gather(*(one() for _ in range(clients)))
                    return time.monotonic() - started, [x for x in results if x != "ok"]

            elapsed, errors = asyncio.run(run())
            web_rss = peak_rss_mib(s.web.process.pid)
        finally:
            worker.stop()
    return [
        {
            "clients waiting at once": clients,
            "errors": len(errors),
            "all answered after s": round(elapsed, 1),
            "web RSS before MiB": round(base_rss, 1),
            "web peak RSS MiB": round(web_rss, 1),
        }
    ]
