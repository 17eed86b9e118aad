"""Scenario `floor` (see tests/bench/__init__.py for what it measures)."""

from __future__ import annotations

import threading
import time
from typing import Any

from tests import loadgen
from tests.bench.common import PLAIN_BODY, cpu_seconds, plain_stack, run_load, warm_up
from tests.fake_upstream import OPENAI_KEY
from tests.live import wait_until


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
