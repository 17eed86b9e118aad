"""Scenario `tiers` (see tests/bench/__init__.py): what work that can wait saves through flex and
provider batches, against what it would cost realtime, on one deployment whose realtime limit it
fills, beside a steady interactive load."""

from __future__ import annotations

import sqlite3
import statistics
import sys
import threading
import time
from decimal import Decimal
from typing import Any

import httpx

from tests.bench.common import stack
from tests.fake_batches import BatchTier
from tests.fake_upstream import OPENAI_KEY, FakeUpstream, Flex, Limit
from tests.live import Beat, wait_until

# Time runs 30 times faster than a provider's: an hour is 120 s, a day 48 min; the deployment's
# batches are expected to take an hour (120 s) and end in 10 s here, flex calls are planned at
# 15 min (30 s) and take 200 ms. One deployment: 20 requests a second realtime.
HOUR = 120.0
RPM = 1200
STANDARD = {"input": "2.00", "output": "8.00"}
HALF = {"input": "1.00", "output": "4.00"}
INTERACTIVE_PER_SECOND = 2.0
BATCH_ROOM = 30_000  # enqueued tokens: about 450 of these requests at once


def _registry(url: str) -> dict[str, Any]:
    batch = {**HALF, "turnaround_seconds": int(HOUR), "enqueued_tokens": BATCH_ROOM}
    return {
        "providers": [
            {
                "name": "openai",
                "kind": "openai",
                "base_url": f"{url}/v1",
                "api_key_env": "BENCH_OPENAI_API_KEY",
                "models": [
                    {
                        "name": "bench-tiers",
                        "quota": {"requests_per_minute": RPM, "burst_seconds": 1},
                        "prices": {**STANDARD, "flex": HALF, "batch": batch},
                    }
                ],
            }
        ]
    }


def _body(text: str, **fields: Any) -> dict[str, Any]:
    payload = {"messages": [{"role": "user", "content": text}], "max_tokens": 50}
    return {"model": "bench-tiers", "payload": payload, "wait": 0, **fields}


def _interactive(client: httpx.Client, stop: threading.Event, tag: str) -> None:
    """Interactive requests at a steady rate until `stop`."""
    n = 0
    started = time.monotonic()
    while not stop.is_set():
        answer = client.post("/api/v1/completions", json=_body(f"{tag} {n}", priority="interactive"))
        if answer.status_code != 202:
            print(f"interactive request refused: {answer.status_code} {answer.text[:200]}", file=sys.stderr)
        n += 1
        pause = started + n / INTERACTIVE_PER_SECOND - time.monotonic()
        if pause > 0:
            stop.wait(pause)


def _rows(db: str, tag: str) -> list[sqlite3.Row]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(
            "SELECT status, priority, max_wait, served_tier, cost, input_tokens, output_tokens, created_at,"
            " started_at, finished_at FROM completions_completionrequest WHERE payload LIKE ?",
            (f"%{tag}%",),
        ).fetchall()


def _seconds(a: str, b: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def _standard(row: sqlite3.Row) -> Decimal:
    used_in, used_out = row["input_tokens"] or 0, row["output_tokens"] or 0
    return (used_in * Decimal(STANDARD["input"]) + used_out * Decimal(STANDARD["output"])) / Decimal(
        1_000_000
    )


def _waits(rows: list[sqlite3.Row]) -> tuple[float, float]:
    waits = sorted(_seconds(r["created_at"], r["started_at"]) for r in rows if r["started_at"])
    if not waits:
        return float("nan"), float("nan")
    return statistics.median(waits), waits[min(len(waits) - 1, int(0.95 * len(waits)))]


def scenario_tiers(requests: int = 1000) -> list[dict[str, Any]]:
    """Run 1: the interactive load alone, 60 s. Run 2: the same load while `requests` batch-class
    requests with a 1-hour deadline and `requests` with a 24-hour one are submitted at once."""
    fake = FakeUpstream().start()
    fake.limits["bench-tiers"] = Limit(rpm=RPM, burst=1)
    fake.flex["bench-tiers"] = Flex(latency_ms=200)
    fake.batches.tiers["bench-tiers"] = BatchTier(seconds=10.0, enqueued_tokens=BATCH_ROOM)
    env = {
        "BENCH_OPENAI_API_KEY": OPENAI_KEY,
        "BALANCER_FLEX_SECONDS": str(HOUR / 4),
        "BALANCER_BATCH_RESERVE_SECONDS": str(HOUR / 4),
        "BALANCER_BATCH_COLLECT_SECONDS": "5",
        "BALANCER_BATCH_POLL_SECONDS": "1",
        "BALANCER_TEND_SECONDS": "1",
    }
    rows_out: list[dict[str, Any]] = []
    try:
        with stack(_registry(fake.url), **env) as s:
            worker = s.worker(concurrency=200)
            worker.start()
            beat = Beat(s.env, s.run_dir)
            beat.start()
            db = s.env["DATABASE_URL"].removeprefix("sqlite:///")
            # The key may ask for the interactive class.
            key = s.key("bench-tiers", max_priority="interactive")
            client = httpx.Client(base_url=s.web.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
            try:
                stop = threading.Event()
                alone = threading.Thread(target=_interactive, args=(client, stop, "alone"))
                alone.start()
                time.sleep(60)
                stop.set()
                alone.join()

                stop = threading.Event()
                beside = threading.Thread(target=_interactive, args=(client, stop, "beside"))
                beside.start()
                started = time.monotonic()
                for i in range(requests):
                    client.post(
                        "/api/v1/completions", json=_body(f"hour {i}", priority="batch", max_wait=HOUR)
                    )
                    client.post(
                        "/api/v1/completions", json=_body(f"day {i}", priority="batch", max_wait=24 * HOUR)
                    )
                submitted = time.monotonic() - started

                def all_ended() -> bool:
                    return all(
                        r["status"] not in ("queued", "running")
                        for t in ("hour", "day")
                        for r in _rows(db, t)
                    )

                wait_until(all_ended, 24 * HOUR, "every batch-class request to end", interval=2)
                took = time.monotonic() - started
                stop.set()
                beside.join()
            finally:
                client.close()
                beat.stop()
                worker.stop()
            print(
                f"submitted {2 * requests} in {submitted:.1f} s; all ended in {took:.1f} s", file=sys.stderr
            )
            for tag, label in (("hour", "1-hour deadline"), ("day", "24-hour deadline")):
                found = _rows(db, tag)
                tiers: dict[str, int] = {}
                for r in found:
                    tiers[r["served_tier"] or "none"] = tiers.get(r["served_tier"] or "none", 0) + 1
                cost = sum(Decimal(str(r["cost"] or 0)) for r in found)
                realtime = sum(_standard(r) for r in found)
                late = sum(
                    1
                    for r in found
                    if r["status"] != "succeeded"
                    or _seconds(r["created_at"], r["finished_at"]) > (r["max_wait"] or 0)
                )
                rows_out.append(
                    {
                        "requests": label,
                        "n": len(found),
                        "succeeded": sum(r["status"] == "succeeded" for r in found),
                        "deadlines missed": late,
                        "tiers": ", ".join(f"{k} {v}" for k, v in sorted(tiers.items())),
                        "cost $": f"{cost:.4f}",
                        "all realtime $": f"{realtime:.4f}",
                        "saved": f"{100 * (1 - cost / realtime):.0f} %" if realtime else "–",
                    }
                )
            for tag, label in (("alone", "interactive alone"), ("beside", "interactive beside them")):
                found = _rows(db, tag)
                p50, p95 = _waits(found)
                rows_out.append(
                    {
                        "requests": label,
                        "n": len(found),
                        "succeeded": sum(r["status"] == "succeeded" for r in found),
                        "queue wait p50 ms": round(1000 * p50, 1),
                        "queue wait p95 ms": round(1000 * p95, 1),
                    }
                )
        rows_out.append(
            {
                "requests": "provider 429s",
                "realtime": len(fake.rejected),
                "batches refused": len(fake.batches.refused),
                "flex unavailable": len(fake.unavailable),
                "provider batches": len(fake.batches.batches),
            }
        )
    finally:
        fake.stop()
    headers = list(dict.fromkeys(h for row in rows_out for h in row))
    return [{h: row.get(h, "") for h in headers} for row in rows_out]
