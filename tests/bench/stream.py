"""Scenario `stream` (see tests/bench/__init__.py for what it measures)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from tests.bench.common import _openai_registry, percentile, stack
from tests.fake_upstream import OPENAI_KEY, FakeUpstream
from tests.live import Worker, wait_until


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
            wait_until(worker.ready, 60, "worker to start", interval=0.2)
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
