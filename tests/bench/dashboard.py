"""Scenario `dashboard` (see tests/bench/__init__.py for what it measures)."""

from __future__ import annotations

import time
from typing import Any

import redis

from tests.bench.common import _redis_cpu, cpu_seconds, redis_calls, stack
from tests.live import admin_session


def scenario_dashboard(polls: int = 50) -> list[dict[str, Any]]:
    """What one poll of the live dashboard costs (/admin/dashboard/state.json, every 1.5 s per open
    page): a registry of rate-limited models plus model groups of three deployments each, every
    deployment with an hour of history, one signed-in staff session polling back to back."""
    from completions import history

    rows = []
    for models, groups in ((20, 4), (100, 20)):
        deployments = [
            {"name": f"g{g}-d{d}", "group": f"group-{g}", "quota": {"requests_per_minute": 600}}
            for g in range(groups)
            for d in range(3)
        ]
        registry = {
            "groups": [
                {"name": f"group-{g}", "scheduling": "fair" if g % 2 else "fifo"} for g in range(groups)
            ],
            "providers": [
                {
                    "name": "mock",
                    "kind": "mock",
                    "models": [
                        {"name": f"m{n}", "quota": {"requests_per_minute": 600}} for n in range(models)
                    ]
                    + deployments,
                }
            ],
        }
        with stack(registry) as p:
            r = redis.Redis.from_url(p.redis_url)
            now = time.time()
            pipe = r.pipeline(transaction=False)
            names = [f"mock/m{n}" for n in range(models)] + [f"mock/{d['name']}" for d in deployments]
            for minute in range(61):
                for name in names:
                    history.record(
                        pipe,
                        model=name,
                        status=200,
                        input_tokens=100,
                        output_tokens=20,
                        queue_seconds=0.5,
                        at=now - 60 * minute,
                    )
            pipe.execute()
            p.manage(
                "shell",
                "-c",
                "from django.contrib.auth import get_user_model; "
                "get_user_model().objects.create_superuser('bench', 'bench@localhost', 'bench-password')",
            )
            session = admin_session(p.web.url, "bench", "bench-password")
            session.get("/admin/dashboard/state.json").raise_for_status()  # warm
            pid = p.web.process.pid if p.web.process else 0
            cpu, calls, redis_cpu = cpu_seconds(pid), redis_calls(r), _redis_cpu(r)
            latencies, size, wire = [], 0, 0
            for _ in range(polls):
                started = time.perf_counter()
                reply = session.get("/admin/dashboard/state.json")
                latencies.append(time.perf_counter() - started)
                reply.raise_for_status()
                size, wire = (
                    len(reply.content),
                    int(reply.headers.get("content-length") or len(reply.content)),
                )
            cpu_ms = 1000 * (cpu_seconds(pid) - cpu) / polls
            redis_ms = 1000 * (_redis_cpu(r) - redis_cpu) / polls
            commands = sum(redis_calls(r).values()) - sum(calls.values())
            session.close()
        latencies.sort()
        rows.append(
            {
                "models + groups (deployments)": f"{models} + {groups} ({3 * groups})",
                "polls": polls,
                "p50 ms": round(1000 * latencies[len(latencies) // 2], 1),
                "max ms": round(1000 * latencies[-1], 1),
                "web CPU ms per poll": round(cpu_ms, 1),
                "Redis commands per poll": round(commands / polls, 1),
                "Redis CPU ms per poll": round(redis_ms, 1),
                "reply KiB": round(size / 1024, 1),
                "sent KiB (gzip)": round(wire / 1024, 1),
            }
        )
    return rows
