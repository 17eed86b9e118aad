"""Scenarios `budget` and `cost` (see tests/bench/__init__.py for what they measure)."""

from __future__ import annotations

import statistics
import sys
import time
from decimal import Decimal
from typing import Any

import httpx

from tests.bench.common import closed_run, plain_stack, stack, throughput_row, warm_up
from tests.fake_upstream import OPENAI_KEY, FakeUpstream, Limit
from tests.live import Worker, wait_until

PRICES = {"input": "2.50", "cached_input": "1.25", "output": "10.00"}


def scenario_budget(rounds: int = 3, clients: int = 64, seconds: float = 8) -> list[dict[str, Any]]:
    """The per-request cost of a key with a budget against one without, in one stack, runs
    interleaved (the order alternating each round): on a model without a quota (the budget is
    reserved in a Redis step of its own) and on one with a quota (in the step that puts the
    request in line). The budget is large enough never to refuse."""
    limited = {"requests_per_minute": 6_000_000, "burst_seconds": 60}
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with plain_stack(webs=1, workers=2, concurrency=100, limited=limited, prices=PRICES) as p:
        budgeted = p.s.key("bench-budget", budget={"limit": "1000000", "period": "monthly"})
        warm_up(p)
        for model in ("bench-plain", "bench-limited"):
            for i in range(rounds):
                keys = [("without", p.s.api_key), ("with a budget", budgeted)]
                for label, key in keys if i % 2 == 0 else keys[::-1]:
                    result, usage = closed_run(p, clients, seconds, p.targets(api_key=key, model=model))
                    done = len(result.latencies)
                    row = {**throughput_row(result, clients), **usage.per_request(done)}
                    runs.setdefault((model, label), []).append(row)
                    print(f"{model} {label}: {row}", file=sys.stderr)
    rows = []
    for (model, label), found in runs.items():
        rows.append(
            {
                "model": model,
                "key": label,
                "runs": len(found),
                "completions/s (median)": statistics.median(r["completions/s"] for r in found),
                "p50 ms (median)": statistics.median(r["p50 ms"] for r in found),
                "web CPU ms / request": statistics.median(r["web 1 CPU ms"] for r in found),
                "total CPU ms / request": statistics.median(r["total CPU ms"] for r in found),
                "Redis commands / request": statistics.median(r["Redis commands"] for r in found),
                "errors": sum(r["errors"] for r in found),
            }
        )
    return rows


def scenario_cost(seconds: float = 30) -> list[dict[str, Any]]:
    """A model group of two deployments at fake upstreams that enforce their limits strictly:
    `cheap` (600 requests a minute, $0.15 / $0.60 per million tokens) and `dear` (1,200 a minute,
    $2.50 / $10). Requests sent steadily for `seconds`, at 8 a second (less than cheap alone
    takes) and at 25 (more: dear must help), under the group's `capacity` policy and then its
    `cost` policy: what they cost, how they spread, how long they took."""
    rows = []
    for rate, policy in ((8, "capacity"), (8, "cost"), (25, "capacity"), (25, "cost")):
        fakes = {"cheap": FakeUpstream().start(), "dear": FakeUpstream().start()}
        rpm = {"cheap": 600, "dear": 1200}
        prices = {
            "cheap": {"input": "0.15", "output": "0.60"},
            "dear": {"input": "2.50", "output": "10.00"},
        }
        for name, fake in fakes.items():
            fake.limits["bench-cost"] = Limit(rpm=rpm[name], burst=1)
        providers = [
            {
                "name": name,
                "kind": "openai",
                "base_url": f"{fake.url}/v1",
                "api_key_env": "BENCH_OPENAI_API_KEY",
                "models": [
                    {
                        "name": "bench-cost",
                        "group": "bench-cost",
                        # listed dear first: ties, and the capacity policy, favour it
                        "quota": {"requests_per_minute": rpm[name], "burst_seconds": 1},
                        "prices": prices[name],
                    }
                ],
            }
            for name, fake in sorted(fakes.items(), key=lambda kv: kv[0] != "dear")
        ]
        registry = {"providers": providers, "groups": [{"name": "bench-cost", "policy": policy}]}
        try:
            with stack(registry, BENCH_OPENAI_API_KEY=OPENAI_KEY) as s:
                worker = Worker(s.env, s.run_dir, concurrency=200)
                worker.start()
                wait_until(lambda w=worker: w.ready(), 60, "worker to start", interval=0.2)
                try:
                    rows.append(_cost_run(s.web.url, s.api_key, fakes, policy, rate, int(rate * seconds)))
                finally:
                    worker.stop()
        finally:
            for fake in fakes.values():
                fake.stop()
    return rows


def _cost_run(
    url: str, api_key: str, fakes: dict[str, FakeUpstream], policy: str, rate: float, requests: int
) -> dict[str, Any]:
    marker = f"bench-cost-{time.monotonic_ns()}"
    with httpx.Client(
        base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {api_key}"}, timeout=300
    ) as c:
        started = time.monotonic()
        ids = []
        for i in range(requests):
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
            payload = {"max_tokens": 16, "messages": [{"role": "user", "content": f"{marker} #{i:05d}"}]}
            answer = c.post("/completions", json={"model": "bench-cost", "wait": 0, "payload": payload})
            answer.raise_for_status()
            ids.append(answer.json()["id"])
        results = [c.get(f"/completions/{rid}", params={"wait": 300}).json() for rid in ids]
        took = time.monotonic() - started
    ok = [r for r in results if r["status"] == "succeeded"]
    spent = sum((Decimal(r["cost"]["actual"]) for r in ok), Decimal(0))
    rejected = sum(1 for fake in fakes.values() for x in fake.rejected if marker in str(x.body))
    return {
        "policy": policy,
        "sent / s": rate,
        "requests": requests,
        "succeeded": len(ok),
        "to cheap / dear": f"{sum(r['provider'] == 'cheap' for r in ok)} / {sum(r['provider'] == 'dear' for r in ok)}",
        "spent $": str(spent),
        "$ per 1,000 requests": str((spent * 1000 / max(len(ok), 1)).quantize(Decimal("0.0001"))),
        "all done in s": round(took, 1),
        "upstream 429s": rejected,
    }
