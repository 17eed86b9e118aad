"""Redis memory, and what a status read costs, with many lines after a long load: `--lines`
rate-limited lines (1,000) in a Redis of their own, each granting a request every
`lines / rate` seconds (`--rate` grants a second in all, from five client keys, so every line
keeps a flow log too) for `--minutes` (60). Every few minutes it prints Redis's memory; at the
end, what one status read of every line (a dashboard poll, /metrics) costs: wall time and Redis
CPU, in one pipelined round trip.

    python -m tests.redis_memory [--lines 1000] [--rate 100] [--minutes 60]

It drives the limiter directly (no web or worker process), so the same file measures another
checkout's limiter from that checkout's directory: `cd ../old && python ../main/tests/redis_memory.py`.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="grants a second, over all lines")
    parser.add_argument("--minutes", type=float, default=60.0)
    args = parser.parse_args()
    sys.path.insert(0, os.getcwd())
    os.environ["DJANGO_SETTINGS_MODULE"] = "balancer_project.settings.local"
    from balancer_project.embedded_redis import EmbeddedRedis

    with tempfile.TemporaryDirectory(prefix="balancer-redis-memory-") as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis").start()
        os.environ["REDIS_URL"] = server.url
        try:
            run(args.lines, args.rate, args.minutes)
        finally:
            server.stop()


def run(lines: int, rate: float, minutes: float) -> None:
    import django

    django.setup()
    from balancer_project.redis_conn import get_redis
    from ratelimit import limiter

    r = get_redis()
    names = [f"bench/line-{n}" for n in range(lines)]
    for name in names:
        limiter.configure(name, {"rpm": 600, "tpm": 600_000, "conc": 10, "burst": 60})
    fenced = "token" in inspect.signature(limiter.acquire).parameters

    def grant(line: str, flow: str) -> None:
        rid = uuid.uuid4().hex
        limiter.enqueue(line, rid, input_tokens=100, output_tokens=20, flow=flow)
        if fenced:
            limiter.acquire(line, rid, lease_seconds=30, token=rid)
            limiter.settle(line, rid, mode="usage", input_tokens=100, output_tokens=10, token=rid)
        else:
            limiter.acquire(line, rid, lease_seconds=30)
            limiter.settle(line, rid, mode="usage", input_tokens=100, output_tokens=10)

    started = time.monotonic()
    deadline = started + 60 * minutes
    report_every = max(60.0, 60 * minutes / 6)
    next_report = started + report_every
    done = 0
    print(
        f"{lines} lines, {rate:g} grants/s, {minutes:g} min; memory at start {memory_mib(r):.1f} MiB",
        flush=True,
    )
    while time.monotonic() < deadline:
        line = names[done % lines]
        grant(line, f"key-{done % 5}")
        done += 1
        # Paced: the next grant is due `done / rate` seconds after the start.
        pause = started + done / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        if time.monotonic() >= next_report:
            print(
                f"  {(time.monotonic() - started) / 60:5.1f} min, {done} grants: {memory_mib(r):.1f} MiB",
                flush=True,
            )
            next_report += report_every
    polls = 5
    cpu = redis_cpu(r)
    t0 = time.perf_counter()
    for _ in range(polls):
        limiter.statuses([(name, 100, 20) for name in names])
    wall = (time.perf_counter() - t0) / polls
    print(
        f"after {done} grants: Redis memory {memory_mib(r):.1f} MiB; one status read of all {lines} lines: "
        f"{1000 * wall:.0f} ms wall, {1000 * (redis_cpu(r) - cpu) / polls:.0f} ms of Redis CPU",
        flush=True,
    )


def memory_mib(r: object) -> float:
    return float(r.info("memory")["used_memory"]) / 2**20  # type: ignore[attr-defined]


def redis_cpu(r: object) -> float:
    info = r.info("cpu")  # type: ignore[attr-defined]
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


if __name__ == "__main__":
    main()
