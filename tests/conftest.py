"""Fixtures for the whole suite.

Unit tests use pytest-django's `db` fixture and call services directly. Integration tests talk
HTTP to a real web process and real Celery worker processes that share the test database and a
real Redis (see tests/plugin.py), with a fake upstream on 127.0.0.1 behind the openai and
anthropic providers; they never use `db` (its open transaction would hide their writes).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from django.conf import settings
from django.core.management import call_command

from tests.fake_batches import BatchTier
from tests.fake_upstream import ANTHROPIC_KEY, OPENAI_KEY, FakeUpstream, Flex, Limit
from tests.live import Beat, WebServer, Worker, child_env


@pytest.fixture(scope="session")
def django_db_setup(django_test_environment: None, django_db_blocker: Any) -> Iterator[None]:
    """The test database, always. (pytest-django's own fixture creates it only when a collected
    test carries a django_db mark; the live-stack tests carry none, and would otherwise run
    against the development database.)"""
    from django.test.utils import setup_databases, teardown_databases

    with django_db_blocker.unblock():
        config = setup_databases(
            verbosity=0, interactive=False, aliases={"default"}, serialized_aliases=set()
        )
    yield
    with django_db_blocker.unblock():
        teardown_databases(config, verbosity=0)


@pytest.fixture(scope="session")
def run_dir() -> Path:
    """The temporary directory of this test run (logs, registry file, SQLite database)."""
    path = Path(os.environ["BALANCER_TEST_RUN_DIR"])
    (path / "logs").mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    """The fake OpenAI + Anthropic server on 127.0.0.1, for the whole run."""
    upstream = FakeUpstream().start()
    upstream.limits.update(fake_limits())
    upstream.flex["gpt-flex"] = Flex(latency_ms=200)
    upstream.batches.tiers.update(BATCH_TIERS)
    yield upstream
    upstream.stop()


@pytest.fixture(scope="session")
def second_upstream() -> Iterator[FakeUpstream]:
    """Another fake upstream: the second key (organisation, server) of the model group gpt-pool,
    with a strict limit of its own."""
    upstream = FakeUpstream().start()
    upstream.limits.update(fake_limits())
    yield upstream
    upstream.stop()


def closed_port() -> int:
    """A local port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Rate-limited models: the balancer's quota, and the same limit enforced by the fake upstream.
LIMITED = {
    # 10 per second, a burst of 10; one in flight at a time keeps the upstream's arrival order exact.
    "gpt-rpm": {"requests_per_minute": 600, "burst_seconds": 1, "max_concurrency": 1},
    "gpt-tpm": {"tokens_per_minute": 12000, "burst_seconds": 1},  # 200 tokens, 200 per second
    "gpt-shared": {"requests_per_minute": 600, "burst_seconds": 1, "max_concurrency": 1},
    "gpt-edit": {"requests_per_minute": 6, "burst_seconds": 10},  # one, then one per 10 s
    "embed-small": {"tokens_per_minute": 6000, "burst_seconds": 1},  # 100 tokens, 100 per second
    # Offers flex processing (its fake upstream too), at half its standard prices.
    "gpt-flex": {"requests_per_minute": 600, "burst_seconds": 1},
}
FLEX_PRICES = {"input": "2", "output": "8", "flex": {"input": "1", "output": "4"}}
# Models whose provider batches are fast (gpt-batch, claude-batch: 1 s a batch, room for 6 of
# their requests at once) or slow (gpt-batch-slow: 10 s an item); realtime, one request per 5 s.
BATCHED = {
    "gpt-batch": "openai",
    "gpt-batch-slow": "openai",
    "claude-batch": "anthropic",
    "gpt-batch-grouped": "openai",  # the one deployment of the model group gpt-batched
}
# A rate margin of 5 % (250 ms a request): a worker's first call of a model waits for its client
# to be built, so it reaches the upstream later after its grant than the next one does.
BATCHED_QUOTA = {"requests_per_minute": 12, "burst_seconds": 5, "margin": 0.05}
BATCH_ROOM = 6 * (20 + 10)  # six requests of ~20 input tokens and an output cap of 10
BATCH_TIERS = {
    "gpt-batch": BatchTier(seconds=1.0, enqueued_tokens=BATCH_ROOM),
    "claude-batch": BatchTier(seconds=1.0, enqueued_tokens=BATCH_ROOM),
    "gpt-batch-slow": BatchTier(seconds=40.0),
    "gpt-batch-grouped": BatchTier(seconds=1.0),
}


def batched_model(name: str) -> dict[str, Any]:
    """A model offering the batch tier, with its fake upstream's limit; the balancer expects a
    batch to take 30 s (10 s for gpt-batch-slow)."""
    room = BATCH_TIERS[name].enqueued_tokens
    turnaround = 10 if name == "gpt-batch-slow" else 30
    batch = {"input": "1", "output": "4", "turnaround_seconds": turnaround, "enqueued_tokens": room}
    grouped = {"group": "gpt-batched"} if name == "gpt-batch-grouped" else {}
    return {
        "name": name,
        "quota": BATCHED_QUOTA,
        "prices": {"input": "2", "output": "8", "batch": batch},
        **grouped,
    }


# Each deployment of the model group gpt-pool: the same strict limit at each of two upstreams.
# A bucket of one second's worth leaves no room for a grant that reaches the upstream late while
# the next ones do not: the margin covers a claim that waits on SQLite's write lock while the web
# process inserts a storm of submissions (its busy handler sleeps in steps of up to 100 ms).
POOL_QUOTA = {"requests_per_minute": 600, "burst_seconds": 1, "margin_seconds": 0.3}
# gpt-patient: one request, then one per 30 s, at a provider whose reads may take 30 s; for
# streams that wait in line, or pause, longer than any socket timeout of the balancer's own.
PATIENT_QUOTA = {"requests_per_minute": 2, "burst_seconds": 30}
REVOKED_KEY = "sk-revoked-key-0123456789"


def fake_limits() -> dict[str, Limit]:
    return {
        model: Limit(
            rpm=q.get("requests_per_minute"), tpm=q.get("tokens_per_minute"), burst=q["burst_seconds"]
        )
        for model, q in {
            **LIMITED,
            "gpt-pool": POOL_QUOTA,
            "gpt-patient": PATIENT_QUOTA,
            **dict.fromkeys(BATCHED, BATCHED_QUOTA),
        }.items()
    }


def test_registry(upstream_url: str, second_url: str = "", down_url: str = "") -> dict[str, Any]:
    return {
        "groups": [
            {"name": "gpt-failover", "policy": "capacity"},
            {"name": "gpt-primary", "fallback": "gpt-pool"},
            {"name": "gpt-refused", "fallback": "gpt-pool"},
            {"name": "gpt-lane", "fallback": "gpt-pool"},
            {"name": "gpt-fair", "scheduling": "fair"},
            {"name": "gpt-ordered", "scheduling": "fifo"},
            {"name": "gpt-batched"},
        ],
        "providers": [
            {
                "name": "openai",
                "kind": "openai",
                "base_url": f"{upstream_url}/v1",
                "api_key_env": "TEST_OPENAI_API_KEY",
                "timeout_seconds": 10,
                "models": [
                    "gpt-test",
                    *(
                        {"name": m, "quota": q, **({"prices": FLEX_PRICES} if m == "gpt-flex" else {})}
                        for m, q in LIMITED.items()
                    ),
                    # Priced (output only, $100 per million tokens), for budgets: a generous quota,
                    # so its requests take the line's step that reserves their worst case.
                    {
                        "name": "gpt-priced",
                        "quota": {"requests_per_minute": 60000, "burst_seconds": 60},
                        "prices": {"input": "0", "output": "100"},
                    },
                    *(batched_model(m) for m, kind in BATCHED.items() if kind == "openai"),
                ],
            },
            {
                "name": "anthropic",
                "kind": "anthropic",
                "base_url": upstream_url,
                "api_key_env": "TEST_ANTHROPIC_API_KEY",
                "timeout_seconds": 10,
                "models": ["claude-test", batched_model("claude-batch")],
            },
            {
                "name": "mock",
                "kind": "mock",
                "options": {"latency_ms": 20},
                "models": [
                    "mock-gpt",
                    {"name": "mock-claude", "options": {"format": "anthropic"}},
                    {"name": "mock-slow", "options": {"latency_ms": 1500}},
                    {"name": "mock-deadline", "quota": {"requests_per_minute": 6, "burst_seconds": 10}},
                    # One request, then one per 10 s: waits longer than a wake-up's longest countdown.
                    {"name": "mock-chain", "quota": {"requests_per_minute": 6, "burst_seconds": 10}},
                    # One request, then one per 4 s: the next ones start well within a listener's TTL.
                    {"name": "mock-orphans", "quota": {"requests_per_minute": 15, "burst_seconds": 4}},
                    # Ten a second, for disabling a model with a queue full of requests.
                    *(
                        {"name": name, "quota": {"requests_per_minute": 600, "burst_seconds": 1}}
                        for name in ("mock-drain", "mock-cancel")
                    ),
                    # One request, then one a minute: whatever comes next waits past any short deadline.
                    {"name": "mock-patience", "quota": {"requests_per_minute": 1, "burst_seconds": 60}},
                    {"name": "mock-small", "quota": {"tokens_per_minute": 600, "burst_seconds": 60}},
                    {
                        "name": "mock-conc",
                        "options": {"latency_ms": 1500},
                        "quota": {"max_concurrency": 1},
                    },
                    # Groups of one deployment each, 10 requests per second, to watch the order:
                    # shared between client keys by weight (gpt-fair), or first come first served.
                    *(
                        {
                            "name": f"mock-{name}",
                            "group": f"gpt-{name}",
                            "quota": {"requests_per_minute": 600, "burst_seconds": 1},
                        }
                        for name in ("fair", "ordered")
                    ),
                    # The group the API's documented examples name (as in deploy/dev-config.yaml).
                    {"name": "mock-pool-a", "group": "mock-pool"},
                    {"name": "mock-pool-b", "group": "mock-pool"},
                    # The model group gpt-lane: one request, then one per 10 s; its fallback is gpt-pool.
                    {
                        "name": "mock-lane",
                        "group": "gpt-lane",
                        "quota": {"requests_per_minute": 6, "burst_seconds": 10},
                    },
                ],
            },
            # The model group gpt-pool: two keys at two upstreams, each strictly limited.
            *(
                {
                    "name": name,
                    "kind": "openai",
                    "base_url": f"{url}/v1",
                    "api_key_env": "TEST_OPENAI_API_KEY",
                    "timeout_seconds": 10,
                    "models": [{"name": "gpt-pool", "group": "gpt-pool", "quota": POOL_QUOTA}],
                }
                for name, url in (("pool-a", upstream_url), ("pool-b", second_url or upstream_url))
            ),
            # The model group gpt-failover, in the order ties go: a key the upstream refuses, an
            # upstream that is down, and one that works.
            *(
                {
                    "name": name,
                    "kind": "openai",
                    "base_url": f"{url}/v1",
                    "api_key_env": key_env,
                    "timeout_seconds": 10,
                    "models": [{"name": "gpt-failover", "group": "gpt-failover"}],
                }
                for name, url, key_env in (
                    ("failover-revoked", upstream_url, "TEST_REVOKED_API_KEY"),
                    ("failover-down", down_url or upstream_url, "TEST_OPENAI_API_KEY"),
                    ("failover-ok", upstream_url, "TEST_OPENAI_API_KEY"),
                )
            ),
            {
                "name": "patient",
                "kind": "openai",
                "base_url": f"{upstream_url}/v1",
                "api_key_env": "TEST_OPENAI_API_KEY",
                "timeout_seconds": 30,
                "models": [{"name": "gpt-patient", "quota": PATIENT_QUOTA}],
            },
            # A provider whose reads time out after 2 s: a stream may still run far longer, as
            # long as each chunk arrives within that.
            {
                "name": "brief",
                "kind": "openai",
                "base_url": f"{upstream_url}/v1",
                "api_key_env": "TEST_OPENAI_API_KEY",
                "timeout_seconds": 2,
                "models": [{"name": "gpt-brief", "quota": {"max_concurrency": 1}}],
            },
            # A provider whose key variable no worker has: listed as unavailable.
            {
                "name": "nokey",
                "kind": "openai",
                "base_url": f"{upstream_url}/v1",
                "api_key_env": "TEST_MISSING_API_KEY",
                "models": ["gpt-nokey"],
            },
            # The model group gpt-refused: one deployment whose key the upstream refuses; its
            # fallback is gpt-pool.
            {
                "name": "refused-only",
                "kind": "openai",
                "base_url": f"{upstream_url}/v1",
                "api_key_env": "TEST_REVOKED_API_KEY",
                "timeout_seconds": 10,
                "models": [{"name": "gpt-refused", "group": "gpt-refused"}],
            },
            # The model group gpt-primary: one deployment, down; its fallback is gpt-pool.
            {
                "name": "primary-down",
                "kind": "openai",
                "base_url": f"{down_url or upstream_url}/v1",
                "api_key_env": "TEST_OPENAI_API_KEY",
                "timeout_seconds": 10,
                "models": [{"name": "gpt-primary", "group": "gpt-primary"}],
            },
        ],
    }


@pytest.fixture(scope="session")
def live_database(
    django_db_setup: None,
    django_db_blocker: Any,
    fake_upstream: FakeUpstream,
    second_upstream: FakeUpstream,
    run_dir: Path,
) -> str:
    """The test database with the test registry applied (through the management command and a
    YAML file, as a deployment would), as a DATABASE_URL for the processes the suite starts."""
    registry = run_dir / "registry.yaml"
    registry.write_text(
        yaml.safe_dump(
            test_registry(fake_upstream.url, second_upstream.url, f"http://127.0.0.1:{closed_port()}")
        )
    )
    with django_db_blocker.unblock():
        call_command("apply_config", str(registry))
    db = settings.DATABASES["default"]
    assert "test" in str(db["NAME"]), f"refusing to run the live stack against {db['NAME']}"
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db.get('USER') or ''}:{db.get('PASSWORD') or ''}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


@pytest.fixture(scope="session")
def stack_env(live_database: str) -> dict[str, str]:
    """Environment of the web and worker processes."""
    return child_env(
        DJANGO_SETTINGS_MODULE="balancer_project.settings.test",
        DATABASE_URL=live_database,
        REDIS_URL=os.environ["REDIS_URL"],
        TEST_OPENAI_API_KEY=OPENAI_KEY,
        TEST_ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        TEST_REVOKED_API_KEY=REVOKED_KEY,
        PYTHONUNBUFFERED="1",
    )


def _worker_alive(hostname: str) -> bool:
    from completions.workers import live_workers

    return hostname in live_workers()


@pytest.fixture(scope="session")
def beat(stack_env: dict[str, str], run_dir: Path) -> Iterator[Beat]:
    """Celery beat for the session: the periodic tend (outbox, lines, new models) as in production."""
    b = Beat(stack_env, run_dir / "logs")
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def worker(stack_env: dict[str, str], run_dir: Path, beat: Beat) -> Iterator[Worker]:
    """One Celery worker process for the session (with beat running). Tests may stop and start it
    again."""
    w = Worker(stack_env, run_dir / "logs")
    w.start(ready=_worker_alive)
    yield w
    w.stop()


@pytest.fixture
def start_worker(stack_env: dict[str, str], run_dir: Path) -> Iterator[Any]:
    """Start extra worker processes; they are stopped when the test ends."""
    started: list[Worker] = []

    def start(wait: bool = True, **kwargs: Any) -> Worker:
        w = Worker(stack_env, run_dir / "logs", **kwargs)
        w.start(ready=_worker_alive if wait else None)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


@pytest.fixture
def start_web(stack_env: dict[str, str], run_dir: Path) -> Iterator[Any]:
    """Start extra web processes; they are stopped when the test ends."""
    started: list[WebServer] = []

    def start() -> WebServer:
        server = WebServer(stack_env, run_dir / "logs")
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def web(stack_env: dict[str, str], run_dir: Path) -> Iterator[WebServer]:
    """One web process (uvicorn, ASGI) for the session."""
    server = WebServer(stack_env, run_dir / "logs")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def make_key(live_database: str, django_db_blocker: Any) -> Any:
    """Create a client API key (committed, so the live processes see it) in the suite's shared
    database, the test registry applied; returns the raw key."""
    from completions.services import api_key_create

    def make(name: str = "test-client") -> str:
        with django_db_blocker.unblock():
            return api_key_create(name=f"{name}-{uuid.uuid4().hex[:6]}")[1]

    return make


@pytest.fixture
def api(web: WebServer, worker: Worker, make_key: Any) -> Iterator[httpx.Client]:
    """An HTTP client for /api/v1 with a fresh client key, against the live web + worker."""
    with httpx.Client(
        base_url=f"{web.url}/api/v1", headers={"Authorization": f"Bearer {make_key()}"}, timeout=60
    ) as client:
        yield client


@pytest.fixture
def marker() -> str:
    """A unique string a test puts in its payloads, to find its own requests at the fake upstream."""
    return f"m-{uuid.uuid4().hex}"
