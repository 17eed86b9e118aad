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

Scenario `stream`: the extra time a streamed chunk takes from the upstream to the client through
the balancer (web, Redis stream, worker), on an otherwise idle machine. The fake upstream stamps
every chunk with the time it sent it (CLOCK_MONOTONIC, one clock for all processes); the client
notes when it arrives, once straight from the fake upstream and once through the balancer.

    python -m tests.bench stream [--requests 20]

Scenario `waiting`: N clients at once on the OpenAI-compatible endpoint of one web process, all
held open while their requests wait their turn (a mock model that runs 50 at a time, 1 s each).
Reported: errors, and the web process's peak resident memory.

    python -m tests.bench waiting [--requests 2000]

Scenario `overhead`: open loop at 50 and 200 requests per second for 10 s each through
`POST /v1/chat/completions` (fake upstream answering after 20 ms), against the same requests
sent to the fake upstream directly: the latency the balancer adds, p50 and p99.

Scenario `throughput`: closed loop, 64 clients sending back to back for 15 s (fake upstream
latency 20 ms): completions per second and errors.

    python -m tests.bench overhead
    python -m tests.bench throughput
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
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
from tests.fake_upstream import OPENAI_KEY, FakeUpstream, Limit
from tests.live import ROOT, WebServer, Worker, child_env, wait_until


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

    def worker(self, **kwargs: Any) -> Worker:
        return Worker(self.env, self.run_dir, **kwargs)


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
            **extra_env,
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
            yield Stack(env, run_dir, web, api_key, redis_url)
        finally:
            web.stop()
            if redis is not None:
                redis.stop()


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
            Limit(rpm=1200, burst=1, jitter=0.05),
        ),
        "bench-tpm": (
            {"tokens_per_minute": 30000, "burst_seconds": 1},
            Limit(tpm=30000, burst=1, jitter=0.05),
        ),
    }
    for model, (_, limit) in limits.items():
        fake.limits[model] = limit
    registry = _openai_registry(fake, [{"name": m, "quota": q} for m, (q, _) in limits.items()])
    rows = []
    try:
        with stack(registry, BENCH_OPENAI_KEY=OPENAI_KEY) as s:
            worker = Worker(s.env, s.run_dir, concurrency=200)
            worker.start()
            wait_until(lambda: "ready" in worker.log_tail(), 60, "worker to start", interval=0.2)
            r = redis.Redis.from_url(s.redis_url, decode_responses=True)
            try:
                for model, (quota, _) in limits.items():
                    rows.append(_ratelimit_run(s, fake, r, model, quota, requests))
            finally:
                worker.stop()
    finally:
        fake.stop()
    return rows


def _ratelimit_run(
    s: Stack, fake: FakeUpstream, r: redis.Redis, model: str, quota: dict[str, float], requests: int
) -> dict[str, Any]:
    marker = f"bench-{model}-{time.monotonic_ns()}"
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
            response = client.post("/completions", json=body)
            response.raise_for_status()
            ids.append(response.json()["id"])
        statuses = [client.get(f"/completions/{rid}", params={"wait": 300}).json()["status"] for rid in ids]
    accepted = [x for x in fake.received(marker) if x not in fake.rejected]
    rejected = [x for x in fake.rejected if marker in str(x.body)]
    order = [int(x.body["messages"][0]["content"].split("#")[1]) for x in accepted]
    t0, t1 = accepted[0].at, accepted[-1].at
    line = f"openai/{model}"
    keys = line_keys(line)
    grants = [int(float(x)) for x in reversed(r.lrange(keys[KEY_NAMES.index("grants")], 0, -1))]
    lags = [float(x) for x in r.lrange(keys[KEY_NAMES.index("lag")], 0, -1)]
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
        "upstream 429s": len(rejected),
        "grant-order inversions": descents(grants),
        "upstream-order inversions": descents(order),
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
        with stack(registry, BENCH_OPENAI_KEY=OPENAI_KEY) as s:
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
                "api_key_env": "BENCH_OPENAI_KEY",
                "models": models,
            }
        ]
    }


PLAIN_BODY = {
    "model": "bench-plain",
    "max_tokens": 8,
    "messages": [{"role": "user", "content": "overhead"}],
    "fake": {"latency_ms": 20},
}


async def open_loop(
    url: str, headers: dict[str, str], rate: float, seconds: float
) -> tuple[list[float], int]:
    """Send at a fixed rate regardless of answers; returns latencies and errors."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as client:

        async def one() -> None:
            nonlocal errors
            started = time.monotonic()
            try:
                r = await client.post(url, json=PLAIN_BODY)
                if r.status_code != 200:
                    errors += 1
                    return
            except httpx.HTTPError:
                errors += 1
                return
            latencies.append(time.monotonic() - started)

        tasks = []
        start = time.monotonic()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return latencies, errors


def _with_plain_stack(run: Any) -> list[dict[str, Any]]:
    fake = FakeUpstream().start()
    try:
        with stack(_openai_registry(fake, ["bench-plain"]), BENCH_OPENAI_KEY=OPENAI_KEY) as s:
            worker = Worker(s.env, s.run_dir, concurrency=200)
            worker.start()
            wait_until(lambda: "ready" in worker.log_tail(), 60, "worker to start", interval=0.2)
            try:
                return run(s, fake)
            finally:
                worker.stop()
    finally:
        fake.stop()


def scenario_overhead() -> list[dict[str, Any]]:
    def run(s: Stack, fake: FakeUpstream) -> list[dict[str, Any]]:
        balancer = (f"{s.web.url}/v1/chat/completions", {"Authorization": f"Bearer {s.api_key}"})
        direct = (f"{fake.url}/v1/chat/completions", {"Authorization": f"Bearer {OPENAI_KEY}"})
        asyncio.run(open_loop(*balancer, rate=20, seconds=2))  # warm-up
        rows = []
        for rate in (50, 200):
            base, base_errors = asyncio.run(open_loop(*direct, rate=rate, seconds=10))
            via, errors = asyncio.run(open_loop(*balancer, rate=rate, seconds=10))
            rows.append(
                {
                    "rate req/s": rate,
                    "requests": len(via) + errors,
                    "errors": errors + base_errors,
                    "direct p50 ms": round(1000 * percentile(base, 0.5), 1),
                    "direct p99 ms": round(1000 * percentile(base, 0.99), 1),
                    "balancer p50 ms": round(1000 * percentile(via, 0.5), 1),
                    "balancer p99 ms": round(1000 * percentile(via, 0.99), 1),
                    "added p50 ms": round(1000 * (percentile(via, 0.5) - percentile(base, 0.5)), 1),
                    "added p99 ms": round(1000 * (percentile(via, 0.99) - percentile(base, 0.99)), 1),
                }
            )
        return rows

    return _with_plain_stack(run)


def scenario_throughput(clients: int = 64, seconds: float = 15) -> list[dict[str, Any]]:
    def run(s: Stack, fake: FakeUpstream) -> list[dict[str, Any]]:
        url = f"{s.web.url}/v1/chat/completions"

        async def closed_loop() -> tuple[int, int, float]:
            done = errors = 0
            deadline = time.monotonic() + seconds
            limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
            headers = {"Authorization": f"Bearer {s.api_key}"}
            async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as client:

                async def loop() -> None:
                    nonlocal done, errors
                    while time.monotonic() < deadline:
                        try:
                            r = await client.post(url, json=PLAIN_BODY)
                            if r.status_code == 200:
                                done += 1
                            else:
                                errors += 1
                        except httpx.HTTPError:
                            errors += 1

                started = time.monotonic()
                await asyncio.gather(*(loop() for _ in range(clients)))
                return done, errors, time.monotonic() - started

        asyncio.run(open_loop(url, {"Authorization": f"Bearer {s.api_key}"}, rate=20, seconds=2))  # warm-up
        done, errors, elapsed = asyncio.run(closed_loop())
        return [
            {
                "clients": clients,
                "seconds": round(elapsed, 1),
                "completed": done,
                "completions/s": round(done / elapsed, 1),
                "errors": errors,
            }
        ]

    return _with_plain_stack(run)


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
        choices=["all", "pool", "ratelimit", "stream", "waiting", "overhead", "throughput"],
    )
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--latency", type=float, default=1.0)
    args = parser.parse_args()
    print(
        f"# {time.strftime('%Y-%m-%d')} on {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    if args.scenario in ("all", "ratelimit"):
        print("\n## ratelimit")
        print_table(scenario_ratelimit(args.requests or 400))
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
        print_table(scenario_throughput())
    if args.scenario in ("all", "pool"):
        print("\n## pool")
        print_table(scenario_pool(args.requests or 500, args.latency))


if __name__ == "__main__":
    main()
