"""What every benchmark scenario shares: the scratch stacks, the lean load and its measures, the tables."""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
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

from tests import loadgen
from tests.fake_upstream import OPENAI_KEY, FakeUpstream
from tests.live import ROOT, WebServer, Worker, child_env, wait_until
from tests.live import manage as live_manage


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

        manage = functools.partial(live_manage, env)
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

    def targets(self, api_key: str = "", **body_fields: Any) -> list[tuple[str, int, bytes]]:
        """A request for every web process: PLAIN_BODY with `body_fields` changed, sent with
        `api_key` (the stack's own by default)."""
        body = json.dumps({**PLAIN_BODY, **body_fields}).encode()
        path = "/v1/chat/completions"
        auth = {"authorization": f"Bearer {api_key or self.s.api_key}"}
        return [
            ("127.0.0.1", w.port, loadgen.build_request("127.0.0.1", w.port, path, body, auth))
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
    prices: dict[str, str] | None = None,
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
        if prices is not None:  # every model priced alike
            models = [{**(m if isinstance(m, dict) else {"name": m}), "prices": prices} for m in models]
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
                        wait_until(lambda w=w: w.ready(), 60, "worker to start", interval=0.2)
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


def closed_run(
    p: Plain, clients: int, seconds: float, targets: list[tuple[str, int, bytes]] | None = None
) -> tuple[loadgen.Result, Usage]:
    """A closed loop spread over every web process (`targets`: p.targets() by default)."""
    per_web = max(1, clients // len(p.webs))
    aims = targets or p.targets()
    result, usage = measured(
        p,
        lambda: run_load(spread(aims, lambda h, port, d: loadgen.closed_loop(h, port, d, per_web, seconds))),
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


def _redis_cpu(r: redis.Redis) -> float:
    """CPU seconds the Redis server has used so far (its own count, wherever it runs)."""
    info = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


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
