"""A registry of 200 models: the worker's consumer loop (where messages come in) does no work per
model, every model's queue is consumed, and a model added later is served without a restart.
The stack runs on a SQLite database and a Redis of the test's own, so the suite's registry and
queues stay as they are."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from balancer_project.embedded_redis import EmbeddedRedis
from tests.live import Beat, WebServer, Worker, manage, wait_until

pytestmark = pytest.mark.timeout(240)

MODELS = 200


def registry(models: int) -> dict[str, Any]:
    """`models` mock models, every other one rate-limited (so the tend has lines to watch)."""
    return {
        "providers": [
            {
                "name": "many",
                "kind": "mock",
                "options": {"latency_ms": 5},
                "models": [
                    {"name": f"m{i:03d}", "quota": {"requests_per_minute": 6000}} if i % 2 else f"m{i:03d}"
                    for i in range(models)
                ],
            }
        ]
    }


def test_a_registry_of_200_models_puts_no_work_on_the_consumer_loop(
    stack_env: dict[str, str], run_dir: Path
) -> None:
    home = run_dir / "registry-scale"
    (home / "queries").mkdir(parents=True, exist_ok=True)
    own = EmbeddedRedis(home / "redis").start()
    env = {
        **stack_env,
        "REDIS_URL": own.url,
        "DATABASE_URL": f"sqlite:///{home / 'db.sqlite3'}",
        "BALANCER_QUERY_COUNT_DIR": str(home / "queries"),
        "BALANCER_BEAT_LOG_LEVEL": "INFO",  # each tick sent, to count the tends
    }

    def apply(models: int) -> None:
        (home / "registry.yaml").write_text(yaml.safe_dump(registry(models)))
        manage(env, "apply_config", str(home / "registry.yaml"))

    manage(env, "migrate", "--noinput", "-v", "0")
    apply(MODELS)
    key = manage(env, "create_api_key", "scale")
    logs = run_dir / "logs"
    web, beat, worker = WebServer(env, logs), Beat(env, logs), Worker(env, logs)
    tends = re.compile(r"Sending due task tend \(completions\.tend\)")

    def counts() -> Path:
        assert worker.process is not None
        return home / "queries" / f"{worker.process.pid}.json"

    def main_thread_statements() -> int:
        return int(json.loads(counts().read_text())["main_thread"])

    try:
        web.start()
        worker.start()
        wait_until(worker.ready, 60, "the worker to start", interval=0.2)
        beat.start()
        with httpx.Client(
            base_url=f"{web.url}/api/v1", headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as http:

            def served(model: str) -> bool:
                body = {"provider": "many", "model": model, "payload": {"messages": []}, "wait": 30}
                return http.post("/completions", json=body).json()["status"] == "succeeded"

            # Every model's queue is consumed: the first, the last, and ones between.
            assert all(served(f"m{i:03d}") for i in (0, 1, 99, 100, MODELS - 2, MODELS - 1))
            wait_until(lambda: counts().exists(), 10, "the worker's query counts")
            # The counts are written every 0.5 s: let the start-up's reads (the bootstep's) reach
            # the file before taking the baseline.
            time.sleep(1.5)
            before = main_thread_statements()
            sent_before = len(tends.findall(beat.log_tail(10**7)))
            # Several tends are sent (every 0.5 s in the test settings), each over all 200 lines.
            wait_until(
                lambda: len(tends.findall(beat.log_tail(10**7))) >= sent_before + 6,
                30,
                "six tends",
                interval=0.2,
            )
            # A model added now reaches the running worker through a later tend, so by the time
            # it is served the six have run too (one queue, first in, first out).
            apply(MODELS + 1)
            wait_until(lambda: served(f"m{MODELS:03d}"), 30, "the new model to be served", interval=0.5)
            # The consumer loop ran no statement while the tends went by and the new model came in.
            assert main_thread_statements() == before
    finally:
        for process in (worker, beat, web):
            process.stop()
        own.stop()
