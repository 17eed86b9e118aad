"""A Redis restart under load, with data loss: a Redis of the test's own (never the suite's) is
stopped and started again empty while requests keep coming. Nothing is lost, budgets and limits
hold."""

from __future__ import annotations

import functools
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from balancer_project.embedded_redis import EmbeddedRedis
from balancer_project.redis_conn import get_redis
from completions.config import config_apply
from completions.maintenance import completion_requests_sweep
from completions.models import CompletionRequest
from completions.services import api_key_create
from tests.fake_upstream import Limit
from tests.live import Beat, WebServer, Worker, heartbeat_seen, wait_until
from tests.live import manage as live_manage

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
    from decimal import Decimal

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


@pytest.mark.django_db
def test_once_redis_lost_its_tasks_a_queued_request_is_dispatched_again_though_its_queue_is_not_empty() -> (
    None
):
    """An unlimited model's queued request whose task Redis lost: its model's queue may already
    hold tasks of requests accepted since the restart, so "an empty queue means a lost task" does
    not hold then; after a loss of data (the tend says so) it is dispatched again in any case (a
    second task for one request is harmless: the claim is a compare-and-swap)."""
    config_apply({"providers": [{"name": "unit-sweep", "kind": "mock", "models": ["sweep-lost"]}]})
    key, _ = api_key_create(name="sweep-lost")
    row = CompletionRequest.objects.create(api_key=key, provider="unit-sweep", model="sweep-lost", payload={})
    client = get_redis()
    client.lpush(row.queue_name, "a task of a request accepted after the restart")
    try:
        assert completion_requests_sweep(queued_after=0).redispatched == 0
        assert completion_requests_sweep(queued_after=0, tasks_lost=True).redispatched == 1
        assert client.llen(row.queue_name) == 2
    finally:
        client.delete(row.queue_name)


# A strict provider's model at two requests a second with a minute's burst, and a model that
# allows two calls at once, each answered 10 s after it arrives (longer than the restart and the
# hold after it: half a lease of LOSS_LEASE_SECONDS).
LOSS_MODEL, LOSS_QUOTA = "gpt-loss", {"requests_per_minute": 120, "burst_seconds": 60}
LOSS_CONC_MODEL, LOSS_CONC, LOSS_CONC_S = "gpt-loss-conc", 2, 10.0
LOSS_LEASE_SECONDS = 8


def test_limits_hold_across_a_redis_restart_with_data_loss(
    stack_env: dict[str, str], run_dir: Path, fake_upstream: Any
) -> None:
    """Redis restarted empty while a strict provider's bucket is nearly spent and two long calls
    hold both slots of a model: the lines are configured again from the database before anything
    enters them, their buckets start empty (the database shows calls within a bucket's span: the
    provider's bucket may be as empty) and their slots unknown until the running calls renew
    theirs. The provider refuses nothing, and no third call runs beside the two."""
    home = run_dir / f"loss-{uuid.uuid4().hex[:6]}"
    home.mkdir()
    own = EmbeddedRedis(home / "redis").start()
    env = {
        **stack_env,
        "REDIS_URL": own.url,
        "DATABASE_URL": f"sqlite:///{home / 'db.sqlite3'}",
        "BALANCER_LEASE_SECONDS": str(LOSS_LEASE_SECONDS),
    }
    manage = functools.partial(live_manage, env)
    provider = {
        "name": "openai",
        "kind": "openai",
        "base_url": f"{fake_upstream.url}/v1",
        "api_key_env": "TEST_OPENAI_API_KEY",
        "timeout_seconds": 30,
        "models": [
            {"name": LOSS_MODEL, "quota": LOSS_QUOTA},
            {"name": LOSS_CONC_MODEL, "quota": {"max_concurrency": LOSS_CONC}},
        ],
    }
    (home / "registry.yaml").write_text(yaml.safe_dump({"providers": [provider]}))
    manage("migrate", "--noinput", "-v", "0")
    manage("apply_config", str(home / "registry.yaml"))
    raw_key = manage("create_api_key", "loss").splitlines()[-1]
    fake_upstream.limits[LOSS_MODEL] = Limit(
        rpm=LOSS_QUOTA["requests_per_minute"], burst=LOSS_QUOTA["burst_seconds"]
    )
    refused_before = sum(1 for r in fake_upstream.rejected if r.body.get("model") == LOSS_MODEL)
    logs = home / "logs"
    logs.mkdir()
    web, beat = WebServer(env, logs), Beat(env, logs)
    workers = [Worker(env, logs), Worker(env, logs)]
    client = redis.Redis.from_url(own.url)
    marker = f"m-{uuid.uuid4().hex}"
    alive = heartbeat_seen(client)

    def received(model: str) -> list[Any]:
        return [r for r in fake_upstream.received(marker) if r.body.get("model") == model]

    try:
        web.start()
        beat.start()
        for w in workers:
            w.start(ready=alive)
        answers: list[tuple[int, str]] = []
        errors: list[str] = []
        http = httpx.Client(
            base_url=f"{web.url}/api/v1", headers={"Authorization": f"Bearer {raw_key}"}, timeout=30
        )

        def submit(model: str, text: str, fake: dict[str, Any] | None = None) -> None:
            payload: dict[str, Any] = {"messages": [{"role": "user", "content": f"{marker} {text}"}]}
            payload["max_tokens"] = 5
            if fake:
                payload["fake"] = fake
            try:
                r = http.post(
                    "/completions", json={"provider": "openai", "model": model, "payload": payload, "wait": 0}
                )
                answers.append((r.status_code, r.json().get("id", "")))
            except httpx.HTTPError as exc:
                errors.append(repr(exc))

        def long_calls(first: int) -> None:
            for i in (first, first + 1):
                submit(LOSS_CONC_MODEL, f"c{i}", {"latency_ms": int(LOSS_CONC_S * 1000)})

        def load(first: int, count: int) -> None:  # about 20 a second
            for i in range(first, first + count):
                submit(LOSS_MODEL, str(i))
                time.sleep(0.05)

        # Most of the provider's burst is spent, and two long calls hold both slots.
        load(0, 100)
        wait_until(lambda: len(received(LOSS_MODEL)) >= 95, 30, "the burst to be spent")
        long_calls(0)
        wait_until(lambda: len(received(LOSS_CONC_MODEL)) == 2, 10, "the two long calls to begin")
        own.stop()  # no persistence: every line, bucket and slot is gone
        time.sleep(1)
        own.start()
        # As soon as Redis is back: two more long calls, and more than the provider's bucket
        # holds of the strict model.
        wait_until(lambda: bool(client.ping()), 10, "Redis to answer")
        long_calls(2)
        load(100, 60)

        assert errors == []
        assert {status for status, _ in answers} <= {202}, {status for status, _ in answers}
        ids = {rid for _, rid in answers}

        def records() -> list[dict[str, Any]]:
            return http.get("/completions", params={"limit": 500}).json()["results"]  # type: ignore[no-any-return]

        wait_until(
            lambda: all(r["status"] not in ("queued", "running") for r in records() if r["id"] in ids),
            120,
            "every accepted request to end",
            interval=0.5,
        )
        results = {r["id"]: r for r in records() if r["id"] in ids}
        assert len(results) == len(ids) == 164
        assert {r["status"] for r in results.values()} == {"succeeded"}
        calls: dict[str, int] = {}
        for call in fake_upstream.received(marker):
            text = call.body["messages"][0]["content"]
            calls[text] = calls.get(text, 0) + 1
        # The provider's limit held: the strict model's bucket did not start full again.
        refused = [r for r in fake_upstream.rejected if r.body.get("model") == LOSS_MODEL][refused_before:]
        assert refused == [], len(refused)
        assert {text: n for text, n in calls.items() if n > 1} == {}
        # Two calls at most at once on the model with two slots, though Redis forgot the first two.
        starts = sorted(r.at for r in received(LOSS_CONC_MODEL))
        assert len(starts) == 4
        most = max(sum(1 for other in starts if s <= other < s + LOSS_CONC_S) for s in starts)
        assert most <= LOSS_CONC, [round(s - starts[0], 2) for s in starts]
        print(f"\nlong calls began at {[round(s - starts[0], 1) for s in starts]} s")
        http.close()
    finally:
        for w in workers:
            w.stop()
        beat.stop()
        web.stop()
        own.stop()
        fake_upstream.limits.pop(LOSS_MODEL, None)
