"""Scenario `groups` (see tests/bench/__init__.py for what it measures)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import redis

from ratelimit.limiter import KEY_NAMES, line_keys
from tests.bench.common import Stack, _first_grants, descents, percentile, stack
from tests.fake_upstream import OPENAI_KEY, FakeUpstream, Limit
from tests.live import Worker, wait_until


def scenario_groups(requests: int) -> list[dict[str, Any]]:
    """A model group of 2 and of 3 deployments, each a key at its own fake upstream limited to
    1,200 requests per minute (a 1 s bucket) and enforcing it strictly; then 2 of those plus a
    third whose key the upstream refuses (401), and plus a third that is down (connection
    refused). `requests` submitted at once through /api/v1 each time. Reports utilisation of the
    healthy deployments' combined limit, upstream 429s, grant-order inversions, how the
    requests spread, and failover: requests whose attempt hit the broken deployment and the time
    from that grant to their next one (at a healthy deployment)."""
    rpm = 1200
    quota = {"requests_per_minute": rpm, "burst_seconds": 1}
    rows = []
    for healthy, broken in ((2, ""), (3, ""), (2, "401"), (2, "down")):
        fakes = [FakeUpstream().start() for _ in range(healthy)]
        for fake in fakes:
            fake.limits["bench-group"] = Limit(rpm=rpm, burst=1)
        providers = [
            {
                "name": f"dep-{i + 1}",
                "kind": "openai",
                "base_url": f"{fake.url}/v1",
                "api_key_env": "BENCH_OPENAI_API_KEY",
                "models": [{"name": "bench-group", "group": "bench-group", "quota": quota}],
            }
            for i, fake in enumerate(fakes)
        ]
        if broken:
            # Listed first: ties go to it, so the first requests meet it.
            url = fakes[0].url if broken == "401" else "http://127.0.0.1:9"
            providers.insert(
                0,
                {
                    "name": "dep-broken",
                    "kind": "openai",
                    "base_url": f"{url}/v1",
                    "api_key_env": "BENCH_BROKEN_API_KEY",
                    "models": [{"name": "bench-group", "group": "bench-group", "quota": quota}],
                },
            )
        try:
            with stack(
                {"providers": providers},
                BENCH_OPENAI_API_KEY=OPENAI_KEY,
                BENCH_BROKEN_API_KEY="sk-refused-0000",
            ) as s:
                worker = Worker(s.env, s.run_dir, concurrency=200)
                worker.start()
                wait_until(lambda w=worker: w.ready(), 60, "worker to start", interval=0.2)
                r = redis.Redis.from_url(s.redis_url, decode_responses=True)
                try:
                    rows.append(_groups_run(s, fakes, r, requests, rpm / 60, healthy, broken))
                finally:
                    worker.stop()
        finally:
            for fake in fakes:
                fake.stop()
    return rows


def _groups_run(
    s: Stack, fakes: list[FakeUpstream], r: redis.Redis, requests: int, rate: float, healthy: int, broken: str
) -> dict[str, Any]:
    marker = f"bench-group-{time.monotonic_ns()}"
    headers = {"Authorization": f"Bearer {s.api_key}"}
    with httpx.Client(base_url=f"{s.web.url}/api/v1", headers=headers, timeout=300) as client:
        ids = []
        for i in range(requests):
            body = {
                "model": "bench-group",
                "wait": 0,
                "payload": {
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": f"{marker} #{i:05d}"}],
                },
            }
            response = client.post("/completions", json=body)
            response.raise_for_status()
            ids.append(response.json()["id"])
        results = [client.get(f"/completions/{rid}", params={"wait": 300}).json() for rid in ids]
    accepted = sorted(
        (
            x
            for fake in fakes
            for x in fake.received(marker)
            if x not in fake.rejected and x.path.endswith("/completions")
        ),
        key=lambda x: x.at,
    )
    rejected = sum(1 for fake in fakes for x in fake.rejected if marker in str(x.body))
    ok = [x for x in accepted if x.headers.get("authorization") == f"Bearer {OPENAI_KEY}"]
    t0, t1 = ok[0].at, ok[-1].at
    allowed = healthy * (rate * 1 + rate * (t1 - t0))
    audit = [
        x.partition("@")
        for x in reversed(r.lrange(line_keys("group:bench-group")[KEY_NAMES.index("grants")], 0, -1))
    ]
    grants = [(int(float(t)), float(at)) for t, _, at in audit if not t.startswith("r")]
    # A failed-over request is granted twice (or more): from its first grant to its last.
    by_ticket: dict[int, list[float]] = {}
    for ticket, at in grants:
        by_ticket.setdefault(ticket, []).append(at)
    failover = [times[-1] - times[0] for times in by_ticket.values() if len(times) > 1]
    spread = [sum(1 for res in results if res["provider"] == f"dep-{i + 1}") for i in range(healthy)]
    return {
        "deployments": f"{healthy}"
        + (f" + 1 ({'refused key' if broken == '401' else 'down'})" if broken else ""),
        "requests": requests,
        "succeeded": sum(1 for res in results if res["status"] == "succeeded"),
        "combined limit /s": round(healthy * rate),
        "run s": round(t1 - t0, 1),
        "utilisation %": round(100 * len(ok) / allowed, 1),
        "upstream 429s": rejected,
        "grant-order inversions": descents(_first_grants([t for t, _ in grants])),
        "served by each": " / ".join(map(str, spread)),
        "attempts at the broken one": len(failover) if broken else "-",
        "failover p50 / max ms": (
            f"{1000 * percentile(failover, 0.5):.0f} / {1000 * max(failover):.0f}" if failover else "-"
        ),
    }
