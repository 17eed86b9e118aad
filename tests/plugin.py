"""Loaded with `-p tests.plugin`, before pytest-django reads the settings: gives the whole run a
real Redis (REDIS_URL if set, else an embedded one on a private Unix socket) and a fresh file for
the SQLite test database that the web and worker processes started by the suite share."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest

_state: dict[str, object] = {}


def _terminate(signum: int, frame: object) -> None:
    # A CI time-out or `kill` sends SIGTERM: unwind like Ctrl-C, so fixtures stop the web and
    # worker processes and pytest_unconfigure stops the embedded Redis.
    raise KeyboardInterrupt


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "balancer_project.settings.test")
    signal.signal(signal.SIGTERM, _terminate)
    run_dir = Path(tempfile.mkdtemp(prefix="balancer-test-"))
    _state["run_dir"] = run_dir
    os.environ["BALANCER_TEST_RUN_DIR"] = str(run_dir)
    os.environ.setdefault("BALANCER_TEST_DB", str(run_dir / "test-db.sqlite3"))
    if not os.environ.get("REDIS_URL"):
        from balancer_project.embedded_redis import EmbeddedRedis

        redis = EmbeddedRedis(run_dir / "redis").start()
        _state["redis"] = redis
        os.environ["REDIS_URL"] = redis.url
        sys.stderr.write(f"tests: embedded Redis at {redis.url}\n")


# Fixtures that start processes: a test that uses one (directly or through another) is `live`;
# `make test-fast` runs the others (`-m "not live"`).
LIVE_FIXTURES = frozenset({"stack_env", "launched", "hostile_web"})
# Modules whose tests start processes of their own without those fixtures.
LIVE_MODULES = frozenset(
    {
        "test_browser",
        "test_fuzz",
        "test_health",
        "test_redis_restart",
        "test_postgres_restart",
        "test_rabbitmq",  # a child pytest run with stacks of its own
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        module = item.path.stem
        if names & LIVE_FIXTURES or module in LIVE_MODULES:
            item.add_marker(pytest.mark.live)


def pytest_unconfigure(config: pytest.Config) -> None:
    redis = _state.pop("redis", None)
    if redis is not None:
        redis.stop()  # type: ignore[attr-defined]
    run_dir = _state.pop("run_dir", None)
    if run_dir is not None and not os.environ.get("BALANCER_TEST_KEEP_RUN_DIR"):
        shutil.rmtree(str(run_dir), ignore_errors=True)  # set that variable to read the logs after
