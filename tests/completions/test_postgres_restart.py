"""PostgreSQL drops every connection (as in a restart, or an operator's pg_terminate_backend) while
clients long-poll and their requests run: every request still ends well, and every later request
succeeds. The stack runs on a database and a Redis of the test's own, on the machine's
PostgreSQL (BALANCER_TEST_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from balancer_project.embedded_redis import EmbeddedRedis
from tests.live import WebServer, Worker, manage, wait_until

pytestmark = pytest.mark.timeout(240)

ADMIN_URL = os.environ.get("BALANCER_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REQUESTS = 12


@pytest.fixture
def own_database() -> Iterator[str]:
    """A database of the test's own on the local PostgreSQL, dropped afterwards; its URL."""
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {ADMIN_URL} ({exc}); set BALANCER_TEST_POSTGRES_URL")
    name = f"balancer_pgfault_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def kill_connections(database: str) -> int:
    """Terminate, server-side, every connection to `database`, and wait until their backends have
    exited (so a request sent next meets only dead connections); how many there were."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            [database],
        ).fetchone()
    assert row is not None
    return int(row[0])


@contextmanager
def own_stack(
    run_dir: Path, name: str, stack_env: dict[str, str], database: str, models: list[Any]
) -> Iterator[tuple[WebServer, Worker, str]]:
    """A web and a worker on `database` and a Redis of their own, serving `models` of one mock
    provider "pg"; yields them with a client key."""
    home = run_dir / name
    home.mkdir(exist_ok=True)
    own_redis = EmbeddedRedis(home / "redis").start()
    # Eight idle connections per process: killed together, they are more than psycopg_pool's
    # backoff between dead connections survives within its 30-s timeout (1+2+4+8+16 s...).
    env = {**stack_env, "REDIS_URL": own_redis.url, "DATABASE_URL": database, "DATABASE_POOL_MIN": "8"}
    (home / "registry.yaml").write_text(
        yaml.safe_dump({"providers": [{"name": "pg", "kind": "mock", "models": models}]})
    )
    manage(env, "migrate", "--noinput", "-v", "0")
    manage(env, "apply_config", str(home / "registry.yaml"))
    key = manage(env, "create_api_key", name)
    web, worker = WebServer(env, run_dir / "logs"), Worker(env, run_dir / "logs")
    try:
        web.start()
        worker.start()
        wait_until(worker.ready, 60, "the worker to start", interval=0.2)
        yield web, worker, key
    finally:
        for process in (worker, web):
            process.stop()
        own_redis.stop()


def test_connections_killed_under_long_polls_fail_no_request_and_every_later_one_succeeds(
    stack_env: dict[str, str], run_dir: Path, own_database: str
) -> None:
    database = own_database.rsplit("/", 1)[1]
    body = {"provider": "pg", "model": "slow", "payload": {"messages": []}}
    models = [{"name": "slow", "options": {"latency_ms": 2000}}]
    with own_stack(run_dir, "pg-restart", stack_env, own_database, models) as (web, worker, key):
        with httpx.Client(
            base_url=f"{web.url}/api/v1", headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as http:
            ids = [http.post("/completions", json={**body, "wait": 0}).json()["id"] for _ in range(REQUESTS)]
            answers: dict[str, Any] = {}

            def long_poll(request_id: str) -> None:
                r = http.get(f"/completions/{request_id}", params={"wait": 30})
                answers[request_id] = (r.status_code, r.json().get("status"))

            polls = [threading.Thread(target=long_poll, args=(i,)) for i in ids]
            for t in polls:
                t.start()
            time.sleep(0.5)  # the polls are waiting, the calls are running upstream
            assert kill_connections(database) > 0
            for t in polls:
                t.join(60)
            # Every long-poll came back with its request's result.
            assert answers == {i: (200, "succeeded") for i in ids}

            # Once more, then only new requests and reads: every one succeeds.
            kill_connections(database)
            after = [http.post("/completions", json={**body, "wait": 30}) for _ in range(3)]
            assert [(r.status_code, r.json().get("status")) for r in after] == [(200, "succeeded")] * 3, [
                r.text for r in after
            ]
            listed = http.get("/completions", params={"limit": 50})
            assert listed.status_code == 200
            assert len(listed.json()["results"]) == REQUESTS + 3
        log = web.log_tail(10**7) + worker.log_tail(10**7)
        assert "Traceback" not in log, log[-3000:]


def test_writes_the_database_refuses_for_a_while_lose_no_request_and_run_none_twice(
    stack_env: dict[str, str], run_dir: Path, own_database: str
) -> None:
    """The database refuses the first claims and the first outcome writes (a trigger raising
    lock_not_available, as a locked or restarting database fails a statement). A refused claim
    is tried again a moment later — a limited model's from its own place in line, its
    reservation returned; an unlimited model's by its task again — and a refused outcome is
    written again. Every request succeeds, each after exactly one call."""
    models = [
        {"name": "limited", "quota": {"requests_per_minute": 6000, "max_concurrency": 2}},
        {"name": "plain"},
    ]
    with own_stack(run_dir, "writes-refused", stack_env, own_database, models) as (web, worker, key):
        with psycopg.connect(own_database, autocommit=True) as db:
            # Sequences, not a table: what a failing statement did is rolled back, nextval is not.
            for sequence in ("refused_limited", "refused_plain", "refused_outcomes"):
                db.execute(f"CREATE SEQUENCE {sequence}")
            db.execute(
                "CREATE FUNCTION refuse_writes() RETURNS trigger AS $$ BEGIN"
                " IF (OLD.status = 'queued' AND NEW.status = 'running' AND NEW.model = 'limited'"
                "     AND nextval('refused_limited') <= 3)"
                " OR (OLD.status = 'queued' AND NEW.status = 'running' AND NEW.model = 'plain'"
                "     AND nextval('refused_plain') <= 2)"
                " OR (OLD.status = 'running' AND NEW.status = 'succeeded'"
                "     AND nextval('refused_outcomes') <= 3) THEN"
                " RAISE EXCEPTION 'refused (a test fault)' USING ERRCODE = 'lock_not_available';"
                " END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            db.execute(
                "CREATE TRIGGER refuse_writes BEFORE UPDATE ON completions_completionrequest"
                " FOR EACH ROW EXECUTE FUNCTION refuse_writes()"
            )
        with httpx.Client(
            base_url=f"{web.url}/api/v1", headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as http:
            ids = [
                http.post(
                    "/completions",
                    json={
                        "provider": "pg",
                        "model": model,
                        "payload": {"messages": [{"role": "user", "content": "hi"}]},
                        "wait": 0,
                    },
                ).json()["id"]
                for model in ["limited"] * 6 + ["plain"] * 3
            ]
            done = [http.get(f"/completions/{i}", params={"wait": 30}).json() for i in ids]
        assert [(d["status"], d["attempts"]) for d in done] == [("succeeded", 1)] * 9
        log = worker.log_tail(10**7)
        assert log.count("its claim failed") == 3 + 2
        assert log.count("recording its outcome: the database refused it") == 3
        assert "Traceback" not in log, log[-3000:]
