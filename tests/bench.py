"""Benchmarks (`make bench`): start the real stack in a scratch directory and measure it.

Scenario `pool` (the pipeline issue's choice of Celery pool): N requests submitted at once to a
mock model whose every call takes `latency` seconds, once with the threads pool and once with
gevent, each worker with concurrency N. Reported: wall time until all N succeeded, requests per
second, errors, and the worker's peak resident memory. The better pool is the default in settings.

    python -m tests.bench pool [--requests 500] [--latency 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
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
import yaml

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

    def worker(self, **kwargs: Any) -> Worker:
        return Worker(self.env, self.run_dir, **kwargs)


@contextmanager
def stack(registry: dict[str, Any]) -> Iterator[Stack]:
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
            DATABASE_URL=f"sqlite:///{run_dir / 'bench.sqlite3'}",
            REDIS_URL=redis_url,
            LOG_LEVEL="WARNING",
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
            yield Stack(env, run_dir, web, api_key)
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
    parser.add_argument("scenario", nargs="?", default="pool", choices=["pool"])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--latency", type=float, default=1.0)
    args = parser.parse_args()
    print(
        f"# {time.strftime('%Y-%m-%d')} on {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print_table(scenario_pool(args.requests, args.latency))


if __name__ == "__main__":
    main()
