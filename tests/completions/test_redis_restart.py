"""A Redis restart under load, with data loss: a Redis of the test's own (never the suite's) is
stopped for two seconds and started again empty while requests keep coming."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from balancer_project.embedded_redis import EmbeddedRedis
from tests.live import Beat, WebServer, Worker, heartbeat_seen, wait_until

pytestmark = pytest.mark.timeout(240)


def test_a_redis_restart_with_data_loss_fails_nothing_and_every_worker_rides_through_it(
    stack_env: dict[str, str], run_dir: Path, make_key: Any
) -> None:
    own = EmbeddedRedis(run_dir / "redis-restart").start()
    env = {**stack_env, "REDIS_URL": own.url}
    logs = run_dir / "logs"
    web, beat = WebServer(env, logs), Beat(env, logs)
    workers = [Worker(env, logs), Worker(env, logs)]
    client = redis.Redis.from_url(own.url)

    alive = heartbeat_seen(client)

    try:
        web.start()
        beat.start()
        for w in workers:
            w.start(ready=alive)
        headers = {"Authorization": f"Bearer {make_key()}"}
        body = {"provider": "mock", "model": "mock-gpt", "payload": {"messages": []}, "wait": 0}
        answers: list[tuple[int, str]] = []
        errors: list[str] = []
        stop = threading.Event()

        def load() -> None:  # about 30 requests a second until told to stop
            with httpx.Client(base_url=f"{web.url}/api/v1", headers=headers, timeout=30) as http:
                while not stop.is_set():
                    try:
                        r = http.post("/completions", json=body)
                        answers.append((r.status_code, r.json().get("id", "")))
                    except httpx.HTTPError as exc:
                        errors.append(repr(exc))
                    time.sleep(0.033)

        sender = threading.Thread(target=load)
        sender.start()
        time.sleep(2)
        before = len(answers)
        own.stop()  # no persistence: everything in Redis is gone
        time.sleep(2)
        own.start()
        restarted = len(answers)
        time.sleep(3)
        stop.set()
        sender.join()

        assert errors == []
        # Requests before the restart, while Redis was gone, and after it (however fast the
        # machine is: a count of them would measure its speed, not the balancer).
        assert 0 < before < restarted < len(answers), (before, restarted, len(answers))
        assert {status for status, _ in answers} <= {200, 202}, answers
        ids = [rid for _, rid in answers]
        with httpx.Client(base_url=f"{web.url}/api/v1", headers=headers, timeout=60) as http:

            def finished() -> bool:
                page = http.get("/completions", params={"limit": 500}).json()["results"]
                return sum(1 for r in page if r["status"] == "succeeded") >= len(ids)

            try:
                wait_until(finished, 60, "every accepted request to succeed", interval=0.5)
            except TimeoutError:
                page = http.get("/completions", params={"limit": 500}).json()["results"]
                counts: dict[str, int] = {}
                for r in page:
                    counts[r["status"]] = counts.get(r["status"], 0) + 1
                tails = "\n".join(p.log_tail(3000) for p in (*workers, beat))
                raise AssertionError(
                    f"{counts} of {len(ids)} accepted; alive: {[w.running for w in workers]}\n{tails}"
                ) from None
            results = {r["id"]: r for r in http.get("/completions", params={"limit": 500}).json()["results"]}
        assert {results[rid]["status"] for rid in ids} == {"succeeded"}
        assert all(results[rid]["attempts"] == 1 for rid in ids)  # none ran twice
        assert all(w.running for w in workers), [w.log_tail() for w in workers]
        wait_until(lambda: all(alive(w.hostname) for w in workers), 10, "both workers to report alive")
    finally:
        for w in workers:
            w.stop()
        beat.stop()
        web.stop()
        own.stop()


def test_a_budget_holds_across_a_redis_restart_with_data_loss(
    stack_env: dict[str, str], run_dir: Path, fake_upstream: Any
) -> None:
    """Requests at a key whose budget covers 60 of them, before, during and after a restart of
    Redis that loses everything: the period is built again from the database (what ended
    requests cost, what open ones reserved), so no more than 60 are ever called and paid.

    The stack has a database of its own as well as a Redis of its own: one database is one
    deployment, and the suite's beat, tending the shared database through the suite's Redis,
    would deliver this stack's outbox into its own lines, checked against its own copy of the
    budget."""
    import functools
    import uuid
    from decimal import Decimal

    import yaml

    from tests.live import manage as live_manage

    own = EmbeddedRedis(run_dir / "redis-restart-budget").start()
    env = {
        **stack_env,
        "REDIS_URL": own.url,
        "DATABASE_URL": f"sqlite:///{run_dir / 'budget-restart.sqlite3'}",
    }

    manage = functools.partial(live_manage, env)
    manage("migrate", "--noinput", "-v", "0")
    manage("apply_config", str(run_dir / "registry.yaml"))
    raw = manage("create_api_key", "budget-restart").splitlines()[-1]
    keys = run_dir / "budget-restart-keys.yaml"
    budget = {"limit": "0.06", "period": "daily"}
    keys.write_text(yaml.safe_dump({"providers": [], "keys": [{"name": "budget-restart", "budget": budget}]}))
    manage("apply_config", str(keys))
    logs = run_dir / "logs"
    web, beat, worker = WebServer(env, logs), Beat(env, logs), Worker(env, logs)
    client = redis.Redis.from_url(own.url)
    marker = f"m-{uuid.uuid4().hex}"
    try:
        web.start()
        beat.start()
        worker.start(ready=heartbeat_seen(client))
        answers: list[int] = []
        stop = threading.Event()
        http = httpx.Client(
            base_url=f"{web.url}/api/v1", headers={"Authorization": f"Bearer {raw}"}, timeout=30
        )

        def load() -> None:  # about 30 a second: $0.001 each, the budget's 60 are gone in 2 s
            i = 0
            while not stop.is_set():
                payload = {"messages": [{"role": "user", "content": f"{marker} {i}"}], "max_tokens": 10}
                body = {"provider": "openai", "model": "gpt-priced", "payload": payload, "wait": 0}
                answers.append(http.post("/completions", json=body).status_code)
                i += 1
                time.sleep(0.033)

        sender = threading.Thread(target=load)
        sender.start()
        wait_until(lambda: len(answers) >= 30, 20, "30 requests")
        own.stop()
        time.sleep(2)
        own.start()
        wait_until(lambda: answers.count(429) >= 20, 30, "refusals after the restart")
        stop.set()
        sender.join()
        assert set(answers) <= {202, 429}, set(answers)

        def records() -> list[dict[str, Any]]:
            return http.get("/completions", params={"limit": 500}).json()["results"]  # type: ignore[no-any-return]

        wait_until(
            lambda: all(r["status"] not in ("queued", "running") for r in records()),
            60,
            "every request to end",
        )
        ended = records()
        succeeded = [r for r in ended if r["status"] == "succeeded"]
        assert all(r["status"] == "succeeded" or r["error"]["type"] == "budget_exceeded" for r in ended)
        # The whole budget, and not a request more, was paid for, once each.
        assert len(succeeded) == 60 and sum(Decimal(r["cost"]["actual"]) for r in succeeded) == Decimal(
            "0.06"
        )
        assert len(fake_upstream.received(marker)) == 60
        spend = http.get("/spend").json()["budget"]
        assert (spend["spent"], spend["reserved"]) == ("0.060000", "0.000000")
        http.close()
    finally:
        worker.stop()
        beat.stop()
        web.stop()
        own.stop()
