"""Scenario `ratelimit` (see tests/bench/__init__.py for what it measures)."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import redis

from ratelimit.limiter import KEY_NAMES, line_keys
from tests.bench.common import (
    Stack,
    _first_grants,
    _openai_registry,
    _prompt,
    descents,
    percentile,
    stack,
)
from tests.fake_upstream import OPENAI_KEY, FakeUpstream, Limit, Recorded
from tests.live import Worker, wait_until


def scenario_ratelimit(requests: int) -> list[dict[str, Any]]:
    fake = FakeUpstream().start()
    # rpm: 20 requests per second, a 1 s bucket; each request uses ~26 tokens, far below any token limit.
    # tpm: 500 tokens per second, a 1 s bucket; ~26 tokens per request make ~19 requests per second.
    limits = {
        "bench-rpm": (
            {"requests_per_minute": 1200, "burst_seconds": 1},
            Limit(rpm=1200, burst=1),
        ),
        "bench-tpm": (
            {"tokens_per_minute": 30000, "burst_seconds": 1},
            Limit(tpm=30000, burst=1),
        ),
    }
    for model, (_, limit) in limits.items():
        fake.limits[model] = limit
    registry = _openai_registry(fake, [{"name": m, "quota": q} for m, (q, _) in limits.items()])
    rows = []
    try:
        with stack(registry, BENCH_OPENAI_API_KEY=OPENAI_KEY) as s:
            worker = Worker(s.env, s.run_dir, concurrency=200)
            worker.start()
            wait_until(worker.ready, 60, "worker to start", interval=0.2)
            r = redis.Redis.from_url(s.redis_url, decode_responses=True)
            try:
                for model, (quota, _) in limits.items():
                    rows.append(_ratelimit_run(s, fake, r, model, quota, requests))
                # The same RPM-bound model again, with every 10th request failing once upstream
                # (a 429 or a 500, alternately): retried requests must keep their place.
                rows.append(
                    _ratelimit_run(s, fake, r, "bench-rpm", limits["bench-rpm"][0], requests, faults=10)
                )
            finally:
                worker.stop()
    finally:
        fake.stop()
    return rows


def scenario_strict(requests: int, per_second: float = 20.0, rpm: float = 120.0) -> list[dict[str, Any]]:
    """The edges issue's own scenario: `requests` clients of the official openai SDK, started
    `per_second` apart, each waiting for its answer, on a model limited to `rpm` requests per
    minute (default bucket: a minute's worth, full at the start); the fake upstream enforces the
    same bucket strictly. Reports what the provider refused and the order it served them in."""

    import openai

    fake = FakeUpstream().start()
    model = "bench-strict"
    fake.limits[model] = Limit(rpm=rpm)
    registry = _openai_registry(fake, [{"name": model, "quota": {"requests_per_minute": rpm}}])
    marker = f"bench-strict-{time.monotonic_ns()}"
    try:
        with stack(registry, BENCH_OPENAI_API_KEY=OPENAI_KEY) as s:
            worker = Worker(s.env, s.run_dir, concurrency=50)
            worker.start()
            wait_until(worker.ready, 60, "worker to start", interval=0.2)
            client = openai.OpenAI(
                api_key=s.api_key,
                base_url=f"{s.web.url}/v1",
                max_retries=0,
                timeout=requests / rpm * 60 + 120,
            )
            outcomes: list[str] = [""] * requests

            def one(i: int) -> None:
                try:
                    client.chat.completions.create(
                        model=model,
                        max_tokens=16,
                        messages=[{"role": "user", "content": f"{marker} #{i:05d}"}],
                    )
                    outcomes[i] = "ok"
                except openai.APIError as exc:
                    outcomes[i] = type(exc).__name__

            threads = [threading.Thread(target=one, args=(i,)) for i in range(requests)]
            start = time.monotonic()
            try:
                for i, t in enumerate(threads):
                    time.sleep(max(0.0, start + i / per_second - time.monotonic()))
                    t.start()
                for t in threads:
                    t.join()
            finally:
                worker.stop()
            took = time.monotonic() - start
    finally:
        fake.stop()
    received = fake.received(marker)
    rejected = [x for x in fake.rejected if marker in str(x.body)]
    accepted = sorted((x for x in received if x not in fake.rejected), key=lambda x: x.at)
    order = [int(x.body["messages"][0]["content"].split("#")[1]) for x in accepted]
    t0, t1 = accepted[0].at, accepted[-1].at
    rate = rpm / 60
    return [
        {
            "requests": requests,
            "submitted per s": per_second,
            "limit RPM": rpm,
            "answered": outcomes.count("ok"),
            "errors": requests - outcomes.count("ok"),
            "run s": round(took, 1),
            "ideal s": round((requests - rpm) / rate, 1),
            "upstream calls": len(received),
            "upstream 429s": len(rejected),
            "utilisation %": round(100 * len(accepted) / (rate * 60 + rate * (t1 - t0)), 1),
            "upstream-order inversions": descents(order),
            # ... among those served after the first bucket, when grants come one at a time
            "... after the first bucket": descents(order[int(rpm) :]),
        }
    ]


def granted_past_a_retry(
    failed_at: dict[int, float], reentries: dict[int, float], grants: list[tuple[int, float]]
) -> tuple[int, int]:
    """Grants of later requests while an earlier request was failing and waiting for its retry,
    in two windows: (1) from the moment its failed attempt reached the upstream (`failed_at`:
    request number -> wall-clock time) to its settlement and re-entry in its own place
    (`reentries`, Redis time), while its answer was on its way back and nobody could know it
    would wait again; (2) from that re-entry to its own next grant. Strict order through
    retries allows none in (2). `grants`: (request number, Redis time) in grant order."""
    before = after = 0
    for n, failed in failed_at.items():
        back = reentries.get(n)
        regrant = next((at for m, at in grants if m == n and at > failed), None)
        if back is None or regrant is None:
            continue
        later = [at for m, at in grants if m > n]
        before += sum(1 for at in later if failed < at < back)
        after += sum(1 for at in later if back < at < regrant)
    return before, after


def _ratelimit_run(
    s: Stack,
    fake: FakeUpstream,
    r: redis.Redis,
    model: str,
    quota: dict[str, float],
    requests: int,
    faults: int = 0,
) -> dict[str, Any]:
    marker = f"bench-{model}-{time.monotonic_ns()}"
    line = f"openai/{model}"
    keys = line_keys(line)
    r.delete(keys[KEY_NAMES.index("grants")], keys[KEY_NAMES.index("lag")], keys[KEY_NAMES.index("stats")])
    headers = {"Authorization": f"Bearer {s.api_key}"}
    with httpx.Client(base_url=f"{s.web.url}/api/v1", headers=headers, timeout=300) as client:
        ids = []
        for i in range(requests):
            body = {
                "provider": "openai",
                "model": model,
                "wait": 0,
                "payload": {
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": f"{marker} #{i:05d}"}],
                },
            }
            if faults and i % faults == faults - 1:
                status = 429 if (i // faults) % 2 == 0 else 500
                body["payload"]["fake"] = {"fail_times": 1, "key": f"{marker}-{i}", "status": status}
            response = client.post("/completions", json=body)
            response.raise_for_status()
            ids.append(response.json()["id"])
        statuses = [client.get(f"/completions/{rid}", params={"wait": 300}).json()["status"] for rid in ids]
    received = fake.received(marker)
    rejected = [x for x in fake.rejected if marker in str(x.body)]
    number = {id(x): int(x.body["messages"][0]["content"].split("#")[1]) for x in received}
    injected = {number[id(x)] for x in received if "fake" in x.body}
    # Served: the last arrival of each request (an injected failure arrives twice).
    served: dict[int, Recorded] = {}
    failed_at: dict[int, float] = {}
    for x in received:
        if x not in fake.rejected:
            n = number[id(x)]
            if n in injected and n not in failed_at:
                failed_at[n] = x.wall  # its first arrival: the injected failure
            served[n] = x
    accepted = sorted(served.values(), key=lambda x: x.at)
    order = [number[id(x)] for x in accepted]
    t0, t1 = accepted[0].at, accepted[-1].at
    # The line's audit: grants "ticket@time" and retry re-entries "rticket@time", oldest first.
    audit = [x.partition("@") for x in reversed(r.lrange(keys[KEY_NAMES.index("grants")], 0, -1))]
    raw_grants = [(t, at) for t, _, at in audit if not t.startswith("r")]
    grants = [int(float(t)) for t, _ in raw_grants]
    # Tickets are arrival times (µs); requests were submitted one after another, so the n-th
    # ticket in order is request n.
    number_of = {t: n for n, t in enumerate(sorted(set(grants)))}
    grant_log = [(number_of[int(float(t))], float(at)) for t, at in raw_grants]
    reentries = {number_of[int(float(t[1:]))]: float(at) for t, _, at in audit if t.startswith("r")}
    way_back = [reentries[n] - failed_at[n] for n in failed_at if n in reentries]
    before_settled, after_settled = granted_past_a_retry(failed_at, reentries, grant_log)
    lags = [float(x.partition("@")[0]) for x in r.lrange(keys[KEY_NAMES.index("lag")], 0, -1)]
    stats = r.hgetall(keys[KEY_NAMES.index("stats")])
    burst = quota["burst_seconds"]
    if "requests_per_minute" in quota:
        rate, used, what = quota["requests_per_minute"] / 60, len(accepted), "RPM"
    else:
        rate, what = quota["tokens_per_minute"] / 60, "TPM"
        used = sum(16 + _prompt(x.body) for x in accepted)  # tokens charged: prompt + 16 output
    allowed = rate * burst + rate * (t1 - t0)
    return {
        "binding limit": what,
        "requests": requests,
        "succeeded": statuses.count("succeeded"),
        "run s": round(t1 - t0, 1),
        "utilisation %": round(100 * used / allowed, 1),
        "injected failures": len(injected),
        "upstream 429s": len(rejected),
        # A retried request's second grant comes after grants made while its first attempt was
        # in flight: only first grants are compared here; retries have their own column.
        "grant-order inversions": descents(_first_grants(grants)),
        "upstream-order inversions": descents(order),
        # Later requests granted while an earlier one was failing: before its settlement (its
        # answer still on its way back: nobody knew it would wait again) and after it (none).
        "granted before a failure's settlement": before_settled,
        "failure to settlement p50 / max ms": (
            f"{1000 * percentile(way_back, 0.5):.0f} / {1000 * max(way_back):.0f}" if way_back else "-"
        ),
        "granted past a settled retry": after_settled,
        "wake-ups per request": round(int(stats.get("wakes", 0)) / max(1, int(stats.get("granted", 1))), 2),
        "grant lag p50 ms": round(1000 * percentile(lags, 0.5), 1),
        "grant lag p99 ms": round(1000 * percentile(lags, 0.99), 1),
    }
