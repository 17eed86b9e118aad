"""RabbitMQ as the broker (CELERY_BROKER_URL=amqp://…): the suite's broker tests, run again with
it — the pipeline through the native API and both SDKs, waits in line chained by delayed wake-ups
with beat stopped, workers SIGKILLed mid-call and SIGTERMed under load — in a pytest run of their
own (its own Redis and database, as the suite's), on a virtual host of their own on the machine's
RabbitMQ, deleted afterwards. Skipped where no RabbitMQ runs, or its rabbitmqctl cannot be used."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from tests.live import ROOT

pytestmark = pytest.mark.timeout(900)

BROKER_TESTS = [
    "tests/completions/test_api.py",
    "tests/completions/test_compat.py",
    "tests/completions/test_without_beat.py",
    "tests/completions/test_faults.py",
    "tests/completions/test_shutdown.py",
]


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def vhost(live_database: str) -> Iterator[str]:  # live_database: marks the test live
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        pytest.skip("no RabbitMQ on 127.0.0.1:5672")
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("no rabbitmqctl to make a virtual host with")
    name = f"balancer-test-{uuid.uuid4().hex[:8]}"
    made = _rabbitmqctl("add_vhost", name)
    if made.returncode != 0:
        pytest.skip(f"rabbitmqctl cannot make a virtual host here: {made.stderr.strip()[:200]}")
    try:
        assert _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*").returncode == 0
        yield name
    finally:
        _rabbitmqctl("delete_vhost", name)


def test_the_broker_tests_pass_with_rabbitmq_as_the_broker(vhost: str) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        # The run makes its own Redis, run directory and database, as the suite does.
        if k not in {"REDIS_URL", "BALANCER_TEST_RUN_DIR", "BALANCER_TEST_DB", "DATABASE_URL"}
    }
    env["CELERY_BROKER_URL"] = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *BROKER_TESTS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    assert run.returncode == 0, f"{summary}\n{run.stdout[-6000:]}\n{run.stderr[-2000:]}"
    assert " passed" in summary and "skipped" not in summary, summary
    # Every queue the balancer made is a quorum queue: its own and each model's.
    listed = _rabbitmqctl("list_queues", "-q", "-p", vhost, "name", "type").stdout.split("\n")
    types = dict(line.split("\t") for line in listed if "\t" in line and not line.startswith("name\t"))
    ours = {name: kind for name, kind in types.items() if name.startswith(("llm.", "balancer."))}
    assert "balancer.default" in ours and any(name.startswith("llm.") for name in ours), types
    assert set(ours.values()) == {"quorum"}, ours
