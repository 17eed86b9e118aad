"""Fault scenarios of a request's life, timed as production would run them (`make bench` runs the
other benchmarks; these take minutes each): the real stack in a scratch directory, a fake
upstream over HTTP that counts every call it receives, and one fault. Each reports the requests
accepted, those that ended (and how), the upstream calls made, and the calls paid twice (an
upstream call for a request that had already been called, beyond the calls in flight at the
moment of the fault).

Scenario `long-stream`: one stream of `--seconds` (900: 15 minutes) from a provider whose reads
time out after 2 s, a chunk every second; leases, sweeps and tends at their production values.

Scenario `worker-kill`: 20 streams of 20 s on two workers; one worker is SIGKILLed 5 s in. Also
reported: the time from the kill until the last of its requests runs again.

Scenario `web-kill`: 200 clients of the OpenAI-compatible endpoint wait on one web process for
a model of 10 requests a second; the web process is SIGKILLed 3 s in. Also reported: how many
of its requests were answered for nobody (their calls ran after the client was gone).

Scenario `beat-down`: beat is stopped for 120 s while 24 requests wait for a model of one request
per 5 s (waits up to two minutes, past a wake-up's 60-s countdown). Also reported: the latest
start after a request was due.

Scenario `disable`: a model with 100 requests in line is disabled (drain) and the workers are
restarted.

    python -m tests.bench_faults [long-stream|worker-kill|web-kill|beat-down|disable|all] [--seconds 900]

(A PostgreSQL restart under load is tests/completions/test_postgres_restart.py.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import httpx

from tests.bench import Stack, print_table, stack
from tests.fake_upstream import OPENAI_KEY, FakeUpstream, Limit
from tests.live import Beat, WebServer, wait_until

TERMINAL = {"succeeded", "failed", "cancelled", "expired"}


def registry(upstream: FakeUpstream, models: list[Any], timeout: float = 30) -> dict[str, Any]:
    return {
        "providers": [
            {
                "name": "up",
                "kind": "openai",
                "base_url": f"{upstream.url}/v1",
                "api_key_env": "BENCH_OPENAI_API_KEY",
                "timeout_seconds": timeout,
                "models": models,
            }
        ]
    }


@contextmanager
def faulty_stack(
    models: list[Any], limits: dict[str, Limit] | None = None, timeout: float = 30
) -> Iterator[Any]:
    upstream = FakeUpstream().start()
    upstream.limits.update(limits or {})
    try:
        with stack(registry(upstream, models, timeout), BENCH_OPENAI_API_KEY=OPENAI_KEY) as s:
            beat = Beat(s.env, s.run_dir)
            beat.start()
            try:
                yield s, upstream, beat
            finally:
                beat.stop()
    finally:
        upstream.stop()


def ready_worker(s: Stack) -> Any:
    """A worker of the stack, started and ready."""
    worker = s.worker()
    worker.start()
    wait_until(worker.ready, 60, "the worker", 0.2)
    return worker


def records(s: Stack, ids: list[str]) -> list[dict[str, Any]]:
    with httpx.Client(base_url=f"{s.web.url}/api/v1", headers={"Authorization": f"Bearer {s.api_key}"}) as c:
        return [c.get(f"/completions/{rid}").json() for rid in ids]


def wait_all_ended(s: Stack, ids: list[str], timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = records(s, ids)
        if all(r.get("status") in TERMINAL for r in found) or time.monotonic() > deadline:
            return found
        time.sleep(1)


def summary(
    name: str, found: list[dict[str, Any]], calls: int, in_flight_at_fault: int, **extra: Any
) -> dict[str, Any]:
    ended = [r for r in found if r.get("status") in TERMINAL]
    statuses: dict[str, int] = {}
    for r in ended:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {
        "scenario": name,
        "accepted": len(found),
        "ended": f"{len(ended)} ({', '.join(f'{v} {k}' for k, v in sorted(statuses.items()))})",
        "upstream calls": calls,
        "paid twice": calls - len(found) - in_flight_at_fault if calls > len(found) else 0,
        "in flight at the fault": in_flight_at_fault,
        **extra,
    }


def submit_native(s: Stack, model: str, marker: str, n: int) -> list[str]:
    """Submit `n` requests to `model` through /api/v1 without waiting; their ids."""
    body = {
        "provider": "up",
        "model": model,
        "payload": {"messages": [{"role": "user", "content": marker}], "max_tokens": 4},
        "wait": 0,
    }
    with httpx.Client(base_url=f"{s.web.url}/api/v1", headers={"Authorization": f"Bearer {s.api_key}"}) as c:
        return [c.post("/completions", json=body).json()["id"] for _ in range(n)]


def submit_streams(
    s: Stack, n: int, marker: str, fake: dict[str, Any], words: int
) -> tuple[list[str], list[threading.Thread]]:
    """Open `n` compatible streams from threads (each reads to its end); returns the request ids."""
    ids: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        body = {
            "model": "streamer",
            "messages": [{"role": "user", "content": f"{marker} {i}"}],
            "max_tokens": words,
            "stream": True,
            "fake": fake,
        }
        headers = {"Authorization": f"Bearer {s.api_key}"}
        with httpx.stream(
            "POST", f"{s.web.url}/v1/chat/completions", json=body, headers=headers, timeout=None
        ) as r:
            with lock:
                ids.append(r.headers["x-request-id"])
            for _ in r.iter_lines():
                pass

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    wait_until(lambda: len(ids) == n, 60, "the streams to start", 0.2)
    return ids, threads


def scenario_long_stream(seconds: int) -> dict[str, Any]:
    marker = f"m-{uuid.uuid4().hex}"
    with faulty_stack(["streamer"], timeout=2) as (s, upstream, _beat):
        worker = ready_worker(s)
        started = time.monotonic()
        ids, threads = submit_streams(s, 1, marker, {"chunk_ms": 1000, "words": seconds}, seconds)
        for t in threads:
            t.join()
        found = wait_all_ended(s, ids, 60)
        worker.stop()
        text = found[0].get("response", {}).get("text", "")
        return summary(
            "long stream",
            found,
            len(upstream.received(marker)),
            0,
            seconds=round(time.monotonic() - started),
            attempts=found[0].get("attempts"),
            whole=len(text.split()) == seconds,
        )


def scenario_worker_kill() -> dict[str, Any]:
    marker = f"m-{uuid.uuid4().hex}"
    with faulty_stack(["streamer"]) as (s, upstream, _beat):
        doomed, other = s.worker(), s.worker()
        doomed.start()
        wait_until(doomed.ready, 60, "the first worker", 0.2)
        ids, threads = submit_streams(s, 20, marker, {"chunk_ms": 1000}, 20)
        other.start()
        wait_until(other.ready, 60, "the second worker", 0.2)
        time.sleep(2)
        in_flight = len(upstream.received(marker))
        doomed.stop(sig=signal.SIGKILL)
        killed_at = time.monotonic()
        wait_until(lambda: len(upstream.received(marker)) >= 2 * in_flight, 120, "the re-runs", 0.2)
        rerun_after = time.monotonic() - killed_at
        found = wait_all_ended(s, ids, 120)
        other.stop()
        return summary(
            "worker SIGKILLed mid-stream",
            found,
            len(upstream.received(marker)),
            in_flight,
            **{"re-run within (s)": round(rerun_after, 1)},
        )


def scenario_web_kill(clients: int = 200) -> dict[str, Any]:
    marker = f"m-{uuid.uuid4().hex}"
    models = [{"name": "steady", "quota": {"requests_per_minute": 600, "burst_seconds": 1}}]
    with faulty_stack(models) as (s, upstream, _beat):
        worker = ready_worker(s)
        doomed = WebServer(s.env, s.run_dir)
        doomed.start()

        async def wait_all() -> None:
            limits = httpx.Limits(max_connections=clients)
            async with httpx.AsyncClient(
                base_url=doomed.url,
                headers={"Authorization": f"Bearer {s.api_key}"},
                timeout=None,
                limits=limits,
            ) as c:

                async def one(i: int) -> None:
                    body = {
                        "model": "steady",
                        "messages": [{"role": "user", "content": f"{marker} {i}"}],
                        "max_tokens": 4,
                    }
                    try:
                        await c.post("/v1/chat/completions", json=body)
                    except httpx.HTTPError:
                        pass

                await asyncio.gather(*(one(i) for i in range(clients)))

        runner = threading.Thread(target=lambda: asyncio.run(wait_all()), daemon=True)
        runner.start()
        time.sleep(3)
        killed_wall = time.time()
        doomed.stop(sig=signal.SIGKILL)
        wait_until(lambda: not runner.is_alive(), 30, "the clients to see the web gone", 0.2)
        with httpx.Client(
            base_url=f"{s.web.url}/api/v1", headers={"Authorization": f"Bearer {s.api_key}"}
        ) as c:
            ids = [r["id"] for r in c.get("/completions", params={"limit": 500}).json()["results"]]
        found = wait_all_ended(s, ids, 700)
        worker.stop()
        calls = upstream.received(marker)
        for_nobody = sum(1 for r in calls if r.wall > killed_wall)
        return summary(
            "web SIGKILLed, 200 waiting", found, len(calls), 0, **{"answered for nobody": for_nobody}
        )


def scenario_beat_down(requests: int = 24, every: float = 5.0) -> dict[str, Any]:
    marker = f"m-{uuid.uuid4().hex}"
    models = [{"name": "slowline", "quota": {"requests_per_minute": 60 / every, "burst_seconds": every}}]
    with faulty_stack(models) as (s, upstream, beat):
        worker = ready_worker(s)
        beat.stop()
        ids = submit_native(s, "slowline", marker, requests)
        found = wait_all_ended(s, ids, requests * every + 60)
        beat.start()
        worker.stop()
        starts = sorted(
            datetime.fromisoformat(r["started_at"]).timestamp() for r in found if r.get("started_at")
        )
        late = (
            max((b - a) - every for a, b in zip(starts, starts[1:], strict=False)) if len(starts) > 1 else 0.0
        )
        return summary(
            "beat stopped, waits to 2 min",
            found,
            len(upstream.received(marker)),
            0,
            **{"latest start after due (s)": round(late, 2)},
        )


def scenario_disable(requests: int = 100) -> dict[str, Any]:
    marker = f"m-{uuid.uuid4().hex}"
    models = [{"name": "retiring", "quota": {"requests_per_minute": 600, "burst_seconds": 1}}]
    with faulty_stack(models) as (s, upstream, _beat):
        worker = ready_worker(s)
        ids = submit_native(s, "retiring", marker, requests)
        (s.run_dir / "disable.yaml").write_text(
            "providers: [{name: up, kind: openai, models: [{name: retiring, enabled: false}]}]\n"
        )
        s.manage("apply_config", str(s.run_dir / "disable.yaml"))
        worker.stop()
        worker = ready_worker(s)
        found = wait_all_ended(s, ids, 120)
        worker.stop()
        return summary("model disabled, 100 in line", found, len(upstream.received(marker)), 0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "scenario",
        nargs="?",
        default="all",
        choices=["all", "long-stream", "worker-kill", "web-kill", "beat-down", "disable"],
    )
    parser.add_argument("--seconds", type=int, default=900, help="long-stream: its length")
    args = parser.parse_args()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    rows = []
    for name, run in (
        ("worker-kill", scenario_worker_kill),
        ("web-kill", scenario_web_kill),
        ("beat-down", scenario_beat_down),
        ("disable", scenario_disable),
        ("long-stream", lambda: scenario_long_stream(args.seconds)),
    ):
        if args.scenario in ("all", name):
            rows.append(run())
            print_table([rows[-1]])
    if len(rows) > 1:
        print()
        print_table(rows)


if __name__ == "__main__":
    main()
