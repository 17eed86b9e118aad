"""Scenario `fairness` (see tests/bench/__init__.py for what it measures)."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from tests.bench.common import _openai_registry, percentile, stack
from tests.fake_upstream import OPENAI_KEY, FakeUpstream, Limit
from tests.live import Worker, wait_until


def scenario_fairness(flood: int) -> list[dict[str, Any]]:
    """One client key floods `flood` requests into a group of one deployment limited to 1,200
    requests per minute (a grant every 50 ms; the fake upstream enforces it strictly) while
    another sends one request a second: its queue wait under fifo (its requests at default),
    under fair (default), and under fair at interactive. Then two backlogged keys of weights 1
    and 3 on the fair group: their shares of the grants over 30 s while both are backlogged."""
    rpm = 1200
    rows = []
    for scheduling, priority in (("fifo", "default"), ("fair", "default"), ("fair", "interactive")):
        rows.append(_fairness_run(flood, rpm, scheduling, priority))
    return rows


def scenario_weights(rpm: float = 1200) -> list[dict[str, Any]]:
    return [_weights_run(rpm)]


def _fair_stack(rpm: float, scheduling: str) -> tuple[Any, FakeUpstream]:
    fake = FakeUpstream().start()
    fake.limits["bench-fair"] = Limit(rpm=rpm, burst=1)
    registry = _openai_registry(
        fake,
        [
            {
                "name": "bench-fair",
                "group": "bench-fair",
                "quota": {"requests_per_minute": rpm, "burst_seconds": 1},
            }
        ],
    )
    registry["groups"] = [{"name": "bench-fair", "scheduling": scheduling}]
    return stack(registry, BENCH_OPENAI_API_KEY=OPENAI_KEY), fake


def _submit_many(url: str, raw: str, marker: str, count: int, threads: int = 4, **extra: Any) -> None:
    """Submit `count` requests to bench-fair from `threads` threads, as fast as they go."""

    def part(k: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {raw}"}, timeout=60) as c:
            for i in range(k, count, threads):
                body = {"model": "bench-fair", "wait": 0, **extra}
                body["payload"] = {
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": f"{marker} #{i:05d}"}],
                }
                c.post("/completions", json=body).raise_for_status()

    workers = [threading.Thread(target=part, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()


def _fairness_run(flood: int, rpm: float, scheduling: str, priority: str) -> dict[str, Any]:
    context, fake = _fair_stack(rpm, scheduling)
    try:
        with context as s:
            worker = Worker(s.env, s.run_dir, concurrency=100)
            worker.start()
            wait_until(lambda w=worker: w.ready(), 60, "worker to start", interval=0.2)
            try:
                light = s.key("light", max_priority="interactive")
                url = f"{s.web.url}/api/v1"
                _submit_many(url, s.api_key, f"flood-{time.monotonic_ns()}", flood)
                waits, expired = [], 0
                with httpx.Client(
                    base_url=url, headers={"Authorization": f"Bearer {light}"}, timeout=60
                ) as c:
                    # Under fifo it would wait for the whole backlog: 20 s is enough to tell.
                    probes = 20 if scheduling == "fair" else 3
                    for i in range(probes):
                        t = time.monotonic()
                        body = {"model": "bench-fair", "priority": priority, "max_wait": 20, "wait": 25}
                        body["payload"] = {
                            "max_tokens": 16,
                            "messages": [{"role": "user", "content": f"probe {i}"}],
                        }
                        done = c.post("/completions", json=body).json()
                        if done["status"] == "succeeded":
                            waits.append(done["timing"]["queue_seconds"])
                        else:
                            expired += 1
                        time.sleep(max(0.0, 1.0 - (time.monotonic() - t)))
                    backlog = next(g for g in c.get("/queues").json()["groups"] if g["group"] == "bench-fair")
            finally:
                worker.stop()
    finally:
        fake.stop()
    interval_ms = 60_000 / rpm
    return {
        "run": f"{scheduling}, the light key at {priority}",
        "flood": flood,
        "light key's requests": f"{len(waits)} served, {expired} expired (max_wait 20 s)",
        "queue wait p50 ms": round(1000 * percentile(waits, 0.5)) if waits else "-",
        "queue wait p99 ms": round(1000 * percentile(waits, 0.99)) if waits else "> 20,000",
        "grant interval ms": round(interval_ms),
        "still waiting at the end": backlog["waiting"],
        "upstream 429s": len(fake.rejected),
    }


def _weights_run(rpm: float) -> dict[str, Any]:
    context, fake = _fair_stack(rpm, "fair")
    window = 30.0
    try:
        with context as s:
            worker = Worker(s.env, s.run_dir, concurrency=100)
            worker.start()
            wait_until(lambda w=worker: w.ready(), 60, "worker to start", interval=0.2)
            try:
                one, three = s.key("weight-1", weight=1), s.key("weight-3", weight=3)
                url = f"{s.web.url}/api/v1"
                count = int(rpm / 60 * (window + 15))  # more than either can get: both stay backlogged
                subs = [
                    threading.Thread(target=_submit_many, args=(url, raw, f"weights-{name}", count, 2))
                    for name, raw in (("w1", one), ("w3", three))
                ]
                for t in subs:
                    t.start()
                for t in subs:
                    t.join()
                start = time.monotonic()
                time.sleep(window + 5)
            finally:
                worker.stop()
    finally:
        fake.stop()
    # Count arrivals at the upstream in a window starting 5 s after both floods were in.
    lo, hi = start - 0.0, start + window
    got = {name: sum(1 for x in fake.received(f"weights-{name}") if lo <= x.at < hi) for name in ("w1", "w3")}
    total = sum(got.values()) or 1
    return {
        "run": "fair, two backlogged keys of weights 1 and 3",
        "submitted": f"{count} each",
        "served in the window": f"{got['w1']} / {got['w3']} in {window:.0f} s",
        "shares %": f"{100 * got['w1'] / total:.1f} / {100 * got['w3'] / total:.1f}",
        "upstream 429s": len(fake.rejected),
    }
