"""Benchmarks (`make bench`): start the real stack in a scratch directory and measure it.

Scenario `pool` (the pipeline issue's choice of Celery pool): N requests submitted at once to a
mock model whose every call takes `latency` seconds, once with the threads pool and once with
gevent, each worker with concurrency N. Reported: wall time until all N succeeded, requests per
second, errors, and the worker's peak resident memory. The better pool is the default in settings.

    python -m tests.bench pool [--requests 500] [--latency 1.0]

Scenario `ratelimit` (the rate-limit issue's targets): the full stack in front of a fake upstream
(over HTTP on 127.0.0.1) that enforces the same limits and answers 429 above them. For a model
whose binding limit is requests per minute, and one whose binding limit is tokens per minute,
N requests are submitted one after another (so submission order is ticket order) far faster than
the limit allows, and each is then awaited. Reported: utilisation of the binding limit over the
run (used / (bucket + rate x duration), target >= 95%), upstream 429s (target 0), order
inversions in the limiter's grant log and at the upstream (target 0), wake-up tasks per request,
and p50/p99 of the grant lag: the time from the moment the head of the line could start (its
cost fit the buckets) to the moment it was granted (target <= 50 ms).

    python -m tests.bench ratelimit [--requests 400]

Scenario `strict` (the edges issue's own): N clients of the official openai SDK, started 20 per
second, each waiting for its answer, on a model limited to 120 requests per minute (a minute's
bucket, full at the start), against a fake upstream enforcing the same bucket strictly.
Reported: answers, run time against the ideal, upstream 429s (target 0), utilisation and
upstream-order inversions.

    python -m tests.bench strict [--requests 400]

Scenario `stream`: the extra time a streamed chunk takes from the upstream to the client through
the balancer (web, Redis stream, worker), on an otherwise idle machine. The fake upstream stamps
every chunk with the time it sent it (CLOCK_MONOTONIC, one clock for all processes); the client
notes when it arrives, once straight from the fake upstream and once through the balancer.

    python -m tests.bench stream [--requests 20]

Scenario `waiting`: N clients at once on the OpenAI-compatible endpoint of one web process, all
held open while their requests wait their turn (a mock model that runs 50 at a time, 1 s each).
Reported: errors, and the web process's peak resident memory.

    python -m tests.bench waiting [--requests 2000]

The next five (the performance issue's) drive the OpenAI-compatible endpoint with a lean
keep-alive HTTP client (tests/loadgen.py) against a lean fake upstream in its own process
(tests/fast_upstream.py), so that nearly all the CPU of a run is the balancer's.

Scenario `overhead`: open loop at 50 and 200 requests per second for 10 s each through
`POST /v1/chat/completions` (fake upstream answering after 20 ms), against the same requests
sent to the fake upstream directly: the latency the balancer adds, p50 and p99 (1 web, 1 worker).

Scenario `throughput`: closed loop, 64 clients sending back to back for 15 s (fake upstream
latency 20 ms), 1 web + 2 workers by default: completions per second and errors, and the cost
of one completion: CPU milliseconds of every process (web, workers, Redis, the fake upstream, the
load generator), Redis commands (INFO commandstats, commands inside Lua scripts included) and
database statements (counted by every process, BALANCER_QUERY_COUNT_DIR).

Scenario `concurrency`: 6,000 clients at once on one web process against a model allowed 1,000
concurrent calls (2 workers of 510 threads): 1,000 calls are held at the upstream until 5,000
more wait in line, the moment memory is read; then everything runs, 2 s per call. Reported:
in flight, waiting, answered, errors, resident memory of every balancer process (web, workers,
Redis) at that moment and at the peak, and how long `GET /health` took (one probe every 100 ms)
while the 5,000 connected.

Scenario `isolation`: 150 calls of 5 s to each of 1, 2 or 3 models at once on one worker of 100
threads, then 20 requests to another model one after the other: one slow model with each
model's share of the worker's threads unbounded (BALANCER_WORKER_MODEL_SHARE=1) and at the
default 0.5; two and three with the reserve for the other models off
(BALANCER_WORKER_RESERVED_SHARE=0) and at the default 0.2; in turns: the other model's time, and
the worker's CPU while the floods are served.

Scenario `scaleout`: 1 web + 1 worker against 2 + 2: unlimited throughput (128 clients), then a
model limited to 9,000 requests per minute (150/s, 1 s burst): its completions per second, and
the limit checked on the limiter's grant log (Redis time) and on the upstream's arrival log.

Scenario `floor`: what the stack's own parts cost on this machine, each alone, before any of the
balancer's work: a plain Django view through uvicorn (`GET /health`), a Celery publish and the
worker's delivery of a no-op task, one `openai` SDK call and the fake upstream's answer to it.
Their sum is the least one completion can cost here; compare it with `throughput`'s table.

    python -m tests.bench overhead
    python -m tests.bench throughput [--webs 1] [--workers 2]
    python -m tests.bench concurrency
    python -m tests.bench scaleout
    python -m tests.bench floor
    python -m tests.bench isolation
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml

from ratelimit.limiter import KEY_NAMES, line_keys
from tests import loadgen
from tests.fake_upstream import OPENAI_KEY, FakeUpstream, Limit, Recorded
from tests.live import ROOT, WebServer, Worker, admin_session, child_env, wait_until


def peak_rss_mib(pid: int) -> float:
    """Peak resident set (VmHWM) of a process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Stack:
    env: dict[str, str]
    run_dir: Path
    web: WebServer
    api_key: str
    redis_url: str
    manage: Any = None  # runs a manage.py command against the stack's database; returns its stdout

    def worker(self, **kwargs: Any) -> Worker:
        return Worker(self.env, self.run_dir, **kwargs)

    def key(self, name: str, **settings: Any) -> str:
        """A new client key (weight, max_priority… through the registry file's `keys`)."""
        raw = str(self.manage("create_api_key", name))
        if settings:
            path = self.run_dir / f"keys-{name}.yaml"
            path.write_text(yaml.safe_dump({"providers": [], "keys": [{"name": name, **settings}]}))
            self.manage("apply_config", str(path))
        return raw


@contextmanager
def stack(registry: dict[str, Any], **extra_env: str) -> Iterator[Stack]:
    """Redis (REDIS_URL or embedded), a fresh SQLite database with `registry` applied, a web
    process and an API key. Workers are started by the scenario."""
    from balancer_project.embedded_redis import EmbeddedRedis

    with tempfile.TemporaryDirectory(prefix="balancer-bench-") as tmp:
        run_dir = Path(tmp)
        redis = None
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            redis = EmbeddedRedis(run_dir / "redis").start()
            redis_url = redis.url
        env = child_env(
            DJANGO_SETTINGS_MODULE="balancer_project.settings.local",
            DJANGO_DEBUG="false",
            # BENCH_DATABASE_URL: an empty PostgreSQL database to measure against instead of SQLite.
            DATABASE_URL=os.environ.get("BENCH_DATABASE_URL") or f"sqlite:///{run_dir / 'bench.sqlite3'}",
            REDIS_URL=redis_url,
            LOG_LEVEL="WARNING",
            # The load comes from one client key: lift its caps on waiting requests and open calls.
            # And mostly at one model: every worker thread may serve it, as the scenarios' worker
            # sizes assume (`isolation` measures the share and the reserve).
            **{
                "BALANCER_KEY_MAX_QUEUED": "1000000",
                "BALANCER_KEY_MAX_WAITING": "1000000",
                "BALANCER_WORKER_MODEL_SHARE": "1",
                "BALANCER_WORKER_RESERVED_SHARE": "0",
                **extra_env,
            },
        )
        (run_dir / "registry.yaml").write_text(yaml.safe_dump(registry))

        def manage(*args: str) -> str:
            done = subprocess.run(
                [sys.executable, "manage.py", *args],
                cwd=ROOT,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            return done.stdout.strip()

        manage("migrate", "--noinput", "-v", "0")
        manage("apply_config", str(run_dir / "registry.yaml"))
        api_key = manage("create_api_key", "bench")
        web = WebServer(env, run_dir)
        web.start()
        try:
            yield Stack(env, run_dir, web, api_key, redis_url, manage)
        finally:
            web.stop()
            if redis is not None:
                redis.stop()
            report_logged_errors(run_dir)


def report_logged_errors(run_dir: Path) -> None:
    """A run's numbers are only good if nothing failed behind the clients' backs: print to
    stderr the ERROR lines every web process and worker of the stack logged (they all log into
    its directory): a failed after-call pipeline, a lost acknowledgement."""
    for log in sorted(run_dir.glob("*.log")):
        lines = [x for x in log.read_text(errors="replace").splitlines() if " ERROR " in x]
        if lines:
            print(f"{log.stem} logged {len(lines)} errors; the first: {lines[0]}", file=sys.stderr)


async def burst(url: str, api_key: str, count: int, body: dict[str, Any]) -> tuple[float, int, list[str]]:
    """Submit `count` requests at once, each waiting for its result; returns wall time, successes
    and the errors seen."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=300, limits=limits
    ) as client:

        async def one() -> str:
            try:
                r = await client.post("/api/v1/completions", json=body)
            except httpx.HTTPError as exc:
                return f"{exc.__class__.__name__}"
            if r.status_code != 200:
                return f"HTTP {r.status_code}"
            return r.json()["status"]

        started = time.monotonic()
        results = await asyncio.gather(*(one() for _ in range(count)))
        elapsed = time.monotonic() - started
    ok = sum(1 for s in results if s == "succeeded")
    return elapsed, ok, [s for s in results if s != "succeeded"]


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
            wait_until(lambda w=worker: "ready" in w.log_tail(), 60, "worker to start", interval=0.2)
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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _first_grants(tickets: list[int]) -> list[int]:
    seen: set[int] = set()
    out = []
    for t in tickets:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def descents(seq: list[int]) -> int:
    """Adjacent pairs out of order: 0 for a sequence served strictly first come, first served."""
    return sum(1 for a, b in zip(seq, seq[1:], strict=False) if b < a)


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
            wait_until(lambda: "ready" in worker.log_tail(), 60, "worker to start", interval=0.2)
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
    import threading

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
            wait_until(lambda: "ready" in worker.log_tail(), 60, "worker to start", interval=0.2)
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
                wait_until(lambda w=worker: "ready" in w.log_tail(), 60, "worker to start", interval=0.2)
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
            wait_until(lambda w=worker: "ready" in w.log_tail(), 60, "worker to start", interval=0.2)
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
            wait_until(lambda w=worker: "ready" in w.log_tail(), 60, "worker to start", interval=0.2)
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


def scenario_stream(streams: int) -> list[dict[str, Any]]:
    fake = FakeUpstream().start()
    registry = _openai_registry(fake, ["bench-stream"])
    body = {
        "model": "bench-stream",
        "stream": True,
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "stream"}],
        "fake": {"chunk_ms": 20, "stamp": True},
    }

    def delays(url: str, headers: dict[str, str]) -> list[float]:
        out = []
        with httpx.Client(timeout=60) as client:
            for _ in range(streams):
                with client.stream("POST", url, json=body, headers=headers) as r:
                    r.raise_for_status()
                    for line in r.iter_lines():
                        if line.startswith("data: {"):
                            now = time.monotonic()
                            sent = json.loads(line[6:]).get("t_sent")
                            if sent is not None:
                                out.append(now - sent)
        return out

    try:
        direct = delays(f"{fake.url}/v1/chat/completions", {"Authorization": f"Bearer {OPENAI_KEY}"})
        with stack(registry, BENCH_OPENAI_API_KEY=OPENAI_KEY) as s:
            worker = Worker(s.env, s.run_dir, concurrency=20)
            worker.start()
            wait_until(lambda: "ready" in worker.log_tail(), 60, "worker to start", interval=0.2)
            try:
                delays(
                    f"{s.web.url}/v1/chat/completions", {"Authorization": f"Bearer {s.api_key}"}
                )  # warm-up
                via = delays(f"{s.web.url}/v1/chat/completions", {"Authorization": f"Bearer {s.api_key}"})
            finally:
                worker.stop()
    finally:
        fake.stop()
    row: dict[str, Any] = {"streams": streams, "chunks": len(via)}
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        row[f"direct {name} ms"] = round(1000 * percentile(direct, q), 2)
        row[f"via balancer {name} ms"] = round(1000 * percentile(via, q), 2)
        row[f"added {name} ms"] = round(1000 * (percentile(via, q) - percentile(direct, q)), 2)
    return [row]


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
        wait_until(lambda: "ready" in worker.log_tail(), 60, "worker to start", interval=0.2)
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


def _openai_registry(fake: FakeUpstream, models: list[Any]) -> dict[str, Any]:
    """A registry serving `models` from the fake upstream as provider "openai"."""
    return {
        "providers": [
            {
                "name": "openai",
                "kind": "openai",
                "base_url": f"{fake.url}/v1",
                "api_key_env": "BENCH_OPENAI_API_KEY",
                "models": models,
            }
        ]
    }


PLAIN_BODY = {
    "model": "bench-plain",
    "max_tokens": 8,
    "messages": [{"role": "user", "content": "overhead"}],
}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_calls(r: redis.Redis) -> dict[str, int]:
    """Commands Redis has run so far, by name (calls made inside Lua scripts included)."""
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in r.info("commandstats").items()}


@dataclass
class Plain:
    """Web processes, workers and a lean fake upstream (tests/fast_upstream.py) serving
    "bench-plain" (and "bench-limited" under `limits`), plus what the per-request cost table
    needs: each process's CPU time, Redis's command counts, and the query counts the processes
    write when they exit (BALANCER_QUERY_COUNT_DIR)."""

    s: Stack
    webs: list[WebServer]
    workers: list[Worker]
    upstream: subprocess.Popen[str]
    upstream_port: int
    redis: redis.Redis
    query_dir: Path

    def pids(self) -> dict[str, int]:
        out = {f"web {i + 1}": w.process.pid for i, w in enumerate(self.webs) if w.process}
        out |= {f"worker {i + 1}": w.process.pid for i, w in enumerate(self.workers) if w.process}
        out["fake upstream"] = self.upstream.pid
        return out

    def targets(self, **body_fields: Any) -> list[tuple[str, int, bytes]]:
        """A request for every web process: PLAIN_BODY with `body_fields` changed."""
        body = json.dumps({**PLAIN_BODY, **body_fields}).encode()
        path = "/v1/chat/completions"
        return [
            (
                "127.0.0.1",
                w.port,
                loadgen.build_request(
                    "127.0.0.1", w.port, path, body, {"authorization": f"Bearer {self.s.api_key}"}
                ),
            )
            for w in self.webs
        ]

    def direct(self) -> tuple[str, int, bytes]:
        body = json.dumps(PLAIN_BODY).encode()
        port = self.upstream_port
        return (
            "127.0.0.1",
            port,
            loadgen.build_request(
                "127.0.0.1", port, "/v1/chat/completions", body, {"authorization": f"Bearer {OPENAI_KEY}"}
            ),
        )

    def upstream_stats(self) -> dict[str, Any]:
        return httpx.get(f"http://127.0.0.1:{self.upstream_port}/stats", timeout=30).json()  # type: ignore[no-any-return]

    def rss_mib(self) -> dict[str, float]:
        """Peak resident memory of every balancer process (web, workers, Redis), MiB."""
        pids = {k: v for k, v in self.pids().items() if k != "fake upstream"}
        pids["redis"] = int(self.redis.info("server")["process_id"])
        return {name: peak_rss_mib(pid) for name, pid in pids.items()}

    def query_counts(self) -> dict[str, int]:
        """Statements run so far by every process of the stack, by kind (SELECT, UPDATE...)."""
        totals: dict[str, int] = {}
        for f in self.query_dir.glob("*.json"):
            for kind, n in json.loads(f.read_text())["by_kind"].items():
                totals[kind] = totals.get(kind, 0) + n
        return totals


@contextmanager
def plain_stack(
    webs: int = 1,
    workers: int = 1,
    concurrency: int = 200,
    latency_ms: float = 20,
    limited: dict[str, Any] | None = None,
    pool: str = "threads",
    more_models: tuple[str, ...] = (),
    **extra_env: str,
) -> Iterator[Plain]:
    from tests.live import free_port

    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.fast_upstream", str(port), str(latency_ms)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert upstream.stdout is not None
        if upstream.stdout.readline().strip() != "ready":
            raise RuntimeError("the fake upstream did not start")
        models: list[Any] = ["bench-plain", *more_models]
        if limited is not None:
            models.append({"name": "bench-limited", "quota": limited})
        registry = {
            "providers": [
                {
                    "name": "openai",
                    "kind": "openai",
                    "base_url": f"http://127.0.0.1:{port}/v1",
                    "api_key_env": "BENCH_OPENAI_API_KEY",
                    "models": models,
                }
            ]
        }
        with tempfile.TemporaryDirectory(prefix="balancer-queries-") as qdir:
            with stack(
                registry, BENCH_OPENAI_API_KEY=OPENAI_KEY, BALANCER_QUERY_COUNT_DIR=qdir, **extra_env
            ) as s:
                web_list = [s.web]
                worker_list: list[Worker] = []
                r = redis.Redis.from_url(s.redis_url)
                try:
                    for _ in range(webs - 1):
                        extra = WebServer(s.env, s.run_dir)
                        web_list.append(extra)
                        extra.start()
                    for _ in range(workers):
                        w = Worker(s.env, s.run_dir, concurrency=concurrency, pool=pool)
                        worker_list.append(w)
                        w.start()
                    for w in worker_list:
                        wait_until(lambda w=w: "ready" in w.log_tail(), 60, "worker to start", interval=0.2)
                    yield Plain(s, web_list, worker_list, upstream, port, r, Path(qdir))
                finally:
                    for p in [*worker_list, *web_list[1:]]:
                        p.stop()
    finally:
        upstream.send_signal(signal.SIGTERM)
        upstream.wait(10)


def run_load(coro: Any) -> loadgen.Result:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


async def spread(targets: list[tuple[str, int, bytes]], make: Any) -> loadgen.Result:
    """Run `make(host, port, data)` against every target at once (a client-side balancer over
    several web processes); the results merged."""
    parts = await asyncio.gather(*(make(*t) for t in targets))
    merged = loadgen.Result(elapsed=max(p.elapsed for p in parts))
    for p in parts:
        merged.latencies += p.latencies
        merged.errors += p.errors
    return merged


def warm_up(p: Plain) -> None:
    result = run_load(spread(p.targets(), lambda h, port, d: loadgen.open_loop(h, port, d, 20, 2)))
    if result.errors:
        raise RuntimeError(f"warm-up failed: {result.errors[:3]}")


def scenario_overhead() -> list[dict[str, Any]]:
    rows = []
    with plain_stack(concurrency=100) as p:
        warm_up(p)
        for rate in (50, 200):
            base = run_load(loadgen.open_loop(*p.direct(), rate=rate, seconds=10))
            via = run_load(
                spread(p.targets(), lambda h, port, d, rate=rate: loadgen.open_loop(h, port, d, rate, 10))
            )
            rows.append(
                {
                    "rate req/s": rate,
                    "requests": len(via.latencies) + len(via.errors),
                    "errors": len(via.errors) + len(base.errors),
                    "direct p50 ms": round(1000 * percentile(base.latencies, 0.5), 1),
                    "direct p99 ms": round(1000 * percentile(base.latencies, 0.99), 1),
                    "balancer p50 ms": round(1000 * percentile(via.latencies, 0.5), 1),
                    "balancer p99 ms": round(1000 * percentile(via.latencies, 0.99), 1),
                    "added p50 ms": round(
                        1000 * (percentile(via.latencies, 0.5) - percentile(base.latencies, 0.5)), 1
                    ),
                    "added p99 ms": round(
                        1000 * (percentile(via.latencies, 0.99) - percentile(base.latencies, 0.99)), 1
                    ),
                }
            )
            if via.errors:
                print(f"first errors: {via.errors[:3]}", file=sys.stderr)
    return rows


@dataclass
class Usage:
    """What a run cost: CPU seconds per process, Redis commands and database statements by kind."""

    cpu: dict[str, float]
    redis: dict[str, int]
    queries: dict[str, int]

    def per_request(self, done: int) -> dict[str, Any]:
        n = max(1, done)
        row: dict[str, Any] = {f"{name} CPU ms": round(1000 * sec / n, 2) for name, sec in self.cpu.items()}
        row["total CPU ms"] = round(1000 * sum(self.cpu.values()) / n, 2)
        row["Redis commands"] = round(sum(self.redis.values()) / n, 1)
        row["DB queries"] = round(sum(self.queries.values()) / n, 2)
        row["DB writes"] = round(sum(v for k, v in self.queries.items() if k in WRITES) / n, 2)
        return row

    def detail(self, done: int) -> str:
        n = max(1, done)
        top = sorted(self.redis.items(), key=lambda kv: -kv[1])[:12]
        return (
            "Redis per request: "
            + ", ".join(f"{k} {v / n:.2f}" for k, v in top)
            + "\nDB per request: "
            + (", ".join(f"{k} {v / n:.2f}" for k, v in sorted(self.queries.items(), key=lambda kv: -kv[1])))
        )


WRITES = ("INSERT", "UPDATE", "DELETE")


def measured(p: Plain, run: Any) -> tuple[Any, Usage]:
    """`run()`'s result and what the stack (and Redis, and this process) spent during it."""
    pids = p.pids()
    pids["redis"] = int(p.redis.info("server")["process_id"])
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    own0 = time.process_time()
    calls0, queries0 = redis_calls(p.redis), p.query_counts()
    result = run()
    cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
    cpu["load generator"] = time.process_time() - own0
    time.sleep(1.2)  # the processes write their query counts twice a second
    calls1, queries1 = redis_calls(p.redis), p.query_counts()
    calls = {k: v - calls0.get(k, 0) for k, v in calls1.items() if v > calls0.get(k, 0)}
    queries = {k: v - queries0.get(k, 0) for k, v in queries1.items() if v > queries0.get(k, 0)}
    return result, Usage(cpu, calls, queries)


def closed_run(p: Plain, clients: int, seconds: float) -> tuple[loadgen.Result, Usage]:
    """A closed loop spread over every web process."""
    per_web = max(1, clients // len(p.webs))
    result, usage = measured(
        p,
        lambda: run_load(
            spread(p.targets(), lambda h, port, d: loadgen.closed_loop(h, port, d, per_web, seconds))
        ),
    )
    if result.errors:
        print(f"first errors: {result.errors[:3]}", file=sys.stderr)
    return result, usage


def throughput_row(result: loadgen.Result, clients: int) -> dict[str, Any]:
    done = len(result.latencies)
    return {
        "clients": clients,
        "seconds": round(result.elapsed, 1),
        "completed": done,
        "completions/s": round(done / result.elapsed, 1),
        "errors": len(result.errors),
        "p50 ms": round(1000 * percentile(result.latencies, 0.5), 1),
        "p99 ms": round(1000 * percentile(result.latencies, 0.99), 1),
    }


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


def scenario_floor(
    seconds: float = 10, clients: int = 64, tasks: int = 5000, calls: int = 3000
) -> list[dict[str, Any]]:
    """What the stack's own parts cost on this machine before any of the balancer's work, each
    measured alone on the same stack as `throughput` (one web process, one worker of 100 threads,
    the lean fake upstream at 20 ms):

    - a request through uvicorn, the ASGI handler and Django's middleware to a plain view that
      answers JSON (`GET /health`, closed loop; DRF, the key check and the database are not in
      it): the web process's CPU;
    - a Celery publish of a no-op task (Celery's built-in `celery.accumulate`, which returns its
      arguments) from this process, with the balancer's broker channel: this process's CPU;
    - the worker receiving, running (threads pool, acks_late) and acknowledging those no-op
      tasks: the worker's CPU;
    - one `openai` SDK call to the fake upstream, as a worker makes it (`client.post`, 32
      threads): this process's CPU, and the fake upstream's.

    Their sum is a floor for one completion; `throughput` measures what one costs in full."""
    import threading

    import httpx2
    import openai
    from celery import Celery

    from balancer_project import broker
    from balancer_project.redis_url import celery_broker_url

    rows: list[dict[str, Any]] = []
    with plain_stack(webs=1, workers=1, concurrency=100) as p:
        warm_up(p)
        web, worker, upstream = (p.pids()[k] for k in ("web 1", "worker 1", "fake upstream"))

        port = p.webs[0].port
        data = loadgen.build_request("127.0.0.1", port, "/health", b"", {}, "GET")
        run_load(loadgen.closed_loop("127.0.0.1", port, data, clients, 1))  # warm-up
        cpu0 = cpu_seconds(web)
        result = run_load(loadgen.closed_loop("127.0.0.1", port, data, clients, seconds))
        if result.errors:
            raise RuntimeError(f"GET /health failed: {result.errors[:3]}")
        rows.append(
            {
                "part": "HTTP + Django, a plain JSON view (GET /health)",
                "runs in": "web",
                "calls": len(result.latencies),
                "CPU ms each": round(1000 * (cpu_seconds(web) - cpu0) / len(result.latencies), 2),
            }
        )

        broker.install()
        app = Celery("floor", broker=celery_broker_url(p.s.redis_url))
        app.conf.task_serializer = "json"
        app.send_task("celery.accumulate", queue="balancer.default", ignore_result=True)  # connects

        def drained() -> bool:
            return p.redis.llen("balancer.default") == 0 and p.redis.hlen("unacked") == 0

        wait_until(drained, 30, "the first no-op task")
        own0, worker0 = time.process_time(), cpu_seconds(worker)
        for _ in range(tasks):
            app.send_task(
                "celery.accumulate",
                queue="balancer.default",
                ignore_result=True,
                argsrepr="()",
                kwargsrepr="{}",
            )
        publish = time.process_time() - own0
        wait_until(drained, 120, "the no-op tasks", interval=0.05)
        rows.append(
            {
                "part": "Celery publish of a no-op task",
                "runs in": "web",
                "calls": tasks,
                "CPU ms each": round(1000 * publish / tasks, 2),
            }
        )
        rows.append(
            {
                "part": "Celery delivery: receive, run a no-op task, ack (acks_late, threads)",
                "runs in": "worker",
                "calls": tasks,
                "CPU ms each": round(1000 * (cpu_seconds(worker) - worker0) / tasks, 2),
            }
        )

        client = openai.OpenAI(
            api_key=OPENAI_KEY, base_url=f"http://127.0.0.1:{p.upstream_port}/v1", max_retries=0
        )
        body = {**PLAIN_BODY, "model": "bench-plain"}
        client.post("/chat/completions", body=body, cast_to=httpx2.Response)  # connects
        per_thread = calls // 32

        def call() -> None:
            for _ in range(per_thread):
                client.post("/chat/completions", body=body, cast_to=httpx2.Response).read()

        threads = [threading.Thread(target=call) for _ in range(32)]
        own0, up0 = time.process_time(), cpu_seconds(upstream)
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        n = per_thread * 32
        rows.append(
            {
                "part": "openai SDK call (client.post, 32 threads)",
                "runs in": "worker",
                "calls": n,
                "CPU ms each": round(1000 * (time.process_time() - own0) / n, 2),
            }
        )
        rows.append(
            {
                "part": "fake upstream answering that call",
                "runs in": "fake upstream",
                "calls": n,
                "CPU ms each": round(1000 * (cpu_seconds(upstream) - up0) / n, 2),
            }
        )
    rows.append(
        {
            "part": "floor: one completion's share of the above",
            "runs in": "all",
            "calls": "",
            "CPU ms each": round(sum(r["CPU ms each"] for r in rows), 2),
        }
    )
    return rows


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


def _redis_cpu(r: redis.Redis) -> float:
    """CPU seconds the Redis server has used so far (its own count, wherever it runs)."""
    info = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


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


class ReferenceServer:
    """A process that answers `GET /health` and does nothing else: what a probe takes on this
    machine at that moment whatever the balancer does (the floor: CPU time for the prober)."""

    SCRIPT = """
import asyncio, socket
async def answer(reader, writer):
    await reader.readuntil(b"\\r\\n\\r\\n")
    writer.write(b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\nconnection: close\\r\\n\\r\\nok")
    await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
asyncio.run(main())
"""

    def __enter__(self) -> ReferenceServer:
        self.process = subprocess.Popen(
            [sys.executable, "-c", self.SCRIPT], stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        assert self.process.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.process.stdout.readline())}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class HealthProbes:
    """`GET /health` on each of `urls` in turn, one every 100 ms, each on a connection of its own,
    from a process of its own (in the benchmark's process, the load generator would slow the
    probes down as much as the server does), until `stop()`, which returns each URL's seconds."""

    SCRIPT = """
import json, sys, time, urllib.request
urls, took = sys.argv[1:], {u: [] for u in sys.argv[1:]}
while not sys.stdin.closed:
    for url in urls:
        started = time.monotonic()
        with urllib.request.urlopen(url + "/health", timeout=120) as response:
            assert response.status == 200, response.status
        took[url].append(time.monotonic() - started)
        time.sleep(0.1)
    import select
    if select.select([sys.stdin], [], [], 0)[0]:
        break
print(json.dumps([took[u] for u in urls]))
"""

    def __init__(self, urls: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", self.SCRIPT, *urls],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> list[list[float]]:
        out, _ = self.process.communicate("stop\n", timeout=300)
        if self.process.returncode != 0:
            raise RuntimeError(f"a /health probe failed (exit {self.process.returncode})")
        return list(json.loads(out))


def scenario_scaleout(seconds: float = 15, clients: int = 128) -> list[dict[str, Any]]:
    """1 web + 1 worker against 2 + 2: unlimited throughput, then a model with a requests-per-
    minute limit below either's capacity, where the upstream's arrival log checks the limit."""
    rpm, burst = 9000, 1.0  # 150 requests per second, a bucket of 150
    rate = rpm / 60
    rows = []
    for webs, workers in ((1, 1), (2, 2)):
        quota = {"requests_per_minute": rpm, "burst_seconds": burst}
        with plain_stack(webs=webs, workers=workers, concurrency=100, limited=quota) as p:
            warm_up(p)
            per_web = clients // webs

            def load(h: str, port: int, d: bytes, per_web: int = per_web) -> Any:
                return loadgen.closed_loop(h, port, d, per_web, seconds)

            free = run_load(spread(p.targets(), load))
            time.sleep(2)  # the bucket refills
            start = time.monotonic()
            held = run_load(spread(p.targets(model="bench-limited"), load))
            arrivals = sorted(
                t for t, m in p.upstream_stats()["arrivals"] if m == "bench-limited" and t >= start
            )
            r = redis.Redis.from_url(p.s.redis_url, decode_responses=True)
            grant_log = r.lrange(line_keys("openai/bench-limited")[KEY_NAMES.index("grants")], 0, -1)
            grants = sorted(float(x.partition("@")[2]) for x in grant_log if not x.startswith("r"))
        rows.append(
            {
                "web + worker processes": f"{webs} + {workers}",
                "unlimited completions/s": round(len(free.latencies) / free.elapsed, 1),
                "unlimited errors": len(free.errors),
                "limited completions/s": round(len(held.latencies) / held.elapsed, 1),
                "limited errors": len(held.errors),
                "limit req/s": rate,
                "grants over the limit": over_limit(grants, rate, rate * burst, 0.0),
                "upstream arrivals over the limit": over_limit(arrivals, rate, rate * burst, 0.0),
                "... with 10 ms arrival jitter": over_limit(arrivals, rate, rate * burst, 0.01),
                "utilisation %": round(
                    100 * len(arrivals) / (rate * burst + rate * (arrivals[-1] - arrivals[0])), 1
                ),
            }
        )
    return rows


def over_limit(times: list[float], rate: float, bucket: float, slack: float) -> int:
    """The most events in any window beyond what a token bucket allows there: a full bucket plus
    the refill over the window, plus `slack` seconds of refill (the time between the limiter's
    grant, on Redis's clock, and the arrival at the upstream varies by milliseconds)."""
    worst = max(
        (j - i + 1) - (bucket + rate * (times[j] - times[i] + slack))
        for i in range(len(times))
        for j in (min(len(times) - 1, i + k) for k in (0, 10, 50, 150, 300, 600, 1200))
    )
    return max(0, math.ceil(worst - 1e-9))


def _prompt(body: dict[str, Any]) -> int:
    from completions.tokens import estimate_input_tokens

    return estimate_input_tokens(body, kind="openai")


def print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    headers = list(rows[0])
    widths = [max(len(str(h)), *(len(str(r[h])) for r in rows)) for h in headers]
    print(" | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(r[h]).ljust(w) for h, w in zip(headers, widths, strict=True)))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # A SIGTERM (CI time-out, kill) must still run the finally blocks that stop what we started.
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "scenario",
        nargs="?",
        default="all",
        choices=[
            "all",
            "pool",
            "ratelimit",
            "strict",
            "groups",
            "fairness",
            "stream",
            "waiting",
            "overhead",
            "throughput",
            "concurrency",
            "scaleout",
            "floor",
            "isolation",
            "dashboard",
        ],
    )
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--webs", type=int, default=1, help="throughput: web processes")
    parser.add_argument("--workers", type=int, default=2, help="throughput: worker processes")
    parser.add_argument("--latency", type=float, default=1.0)
    args = parser.parse_args()
    print(
        f"# {time.strftime('%Y-%m-%d')} on {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    if args.scenario in ("all", "ratelimit"):
        print("\n## ratelimit")
        print_table(scenario_ratelimit(args.requests or 400))
    if args.scenario in ("all", "strict"):
        print("\n## strict")
        print_table(scenario_strict(args.requests or 400))
    if args.scenario in ("all", "groups"):
        print("\n## groups")
        print_table(scenario_groups(args.requests or 600))
    if args.scenario in ("all", "fairness"):
        print("\n## fairness")
        print_table(scenario_fairness(args.requests or 5000))
        print()
        print_table(scenario_weights())
    if args.scenario in ("all", "stream"):
        print("\n## stream")
        print_table(scenario_stream(args.requests or 20))
    if args.scenario in ("all", "waiting"):
        print("\n## waiting")
        print_table(scenario_waiting(args.requests or 2000))
    if args.scenario in ("all", "overhead"):
        print("\n## overhead")
        print_table(scenario_overhead())
    if args.scenario in ("all", "throughput"):
        print("\n## throughput")
        rows, cost = scenario_throughput(webs=args.webs, workers=args.workers)
        print_table(rows)
        print("\n## cost per request")
        print_table(cost)
    if args.scenario in ("all", "concurrency"):
        print("\n## concurrency")
        print_table(scenario_concurrency())
    if args.scenario in ("all", "scaleout"):
        print("\n## scaleout")
        print_table(scenario_scaleout())
    if args.scenario in ("all", "floor"):
        print("\n## floor")
        print_table(scenario_floor())
    if args.scenario in ("all", "isolation"):
        print("\n## isolation")
        print_table(scenario_isolation())
    if args.scenario in ("all", "dashboard"):
        print("\n## dashboard")
        print_table(scenario_dashboard(args.requests or 50))
    if args.scenario in ("all", "pool"):
        print("\n## pool")
        print_table(scenario_pool(args.requests or 500, args.latency))


if __name__ == "__main__":
    main()
