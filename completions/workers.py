"""Which workers are alive: each reports itself (a thread of its own, balancer_project.celery)
and /ready counts those that reported lately. Kept apart from everything else, so that the
Celery app and the health checks need nothing above the Redis connection."""

from __future__ import annotations

import threading
import time

from django.conf import settings
from redis.exceptions import RedisError

from balancer_project.redis_conn import WORKERS_KEY, get_redis

# Set by the tend when it finds Redis without it (new, or restarted without its data): its value
# is when (Unix time), so readers know how long ago Redis's state began.
EPOCH_KEY = "balancer:epoch"
# Provider name -> the last time (Redis time) a worker found its key readable; and not readable.
CREDENTIALS_KEY = "balancer:credentials"
MISSING_KEY = "balancer:credentials:missing"


def worker_heartbeat(
    *, hostname: str, credentialed: list[str] | None = None, missing: list[str] | None = None
) -> None:
    """Record, in Redis time, that a worker is alive (read by /ready), and the providers whose
    key it can read (`credentialed`, when given: names only, never a key) and cannot (`missing`)."""
    r = get_redis()
    seconds, micros = r.time()
    now = seconds + micros / 1e6
    pipe = r.pipeline()
    pipe.zadd(WORKERS_KEY, {hostname: now})
    if credentialed:
        pipe.hset(CREDENTIALS_KEY, mapping=dict.fromkeys(credentialed, f"{now:.3f}"))
    if missing:
        pipe.hset(MISSING_KEY, mapping=dict.fromkeys(missing, f"{now:.3f}"))
    # Forget workers gone for ten times the staleness bound, so the set does not grow forever.
    pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - 10 * settings.BALANCER_WORKER_STALE_SECONDS)
    pipe.execute()


def live_workers() -> list[str]:
    """Hostnames of workers that reported within BALANCER_WORKER_STALE_SECONDS (Redis time)."""
    r = get_redis()
    seconds, micros = r.time()
    now = seconds + micros / 1e6
    found = r.zrangebyscore(WORKERS_KEY, now - settings.BALANCER_WORKER_STALE_SECONDS, "+inf")
    return [w for w in found if isinstance(w, str)]  # decoded replies


def credentialed_providers() -> set[str]:
    """Providers some live worker can call: their key variable is set where the calls are made
    (the web process may well have no provider keys at all)."""
    return _reported(CREDENTIALS_KEY)


def keyless_providers() -> set[str]:
    """Providers some live worker found without a key lately (another may have it)."""
    return _reported(MISSING_KEY)


def _reported(key: str) -> set[str]:
    r = get_redis()
    seconds, micros = r.time()
    now = seconds + micros / 1e6
    # A worker reports every few beats; a provider not reported for ten beats has lost its key.
    stale = 10 * max(settings.BALANCER_WORKER_REFRESH_SECONDS * 5, 1.0)
    seen: dict[str, str] = r.hgetall(key)  # type: ignore[assignment]  # decoded replies
    return {name for name, at in seen.items() if now - float(at) < stale}


UNAVAILABLE = "No live worker has its provider's API key: calls to it would fail."


class CallableProviders:
    """Which providers some live worker can call, read at most once a second per process (two
    Redis reads in one round trip): a request to a model none of them can call is refused up
    front, with the reason /v1/models gives, instead of being queued to fail later."""

    SECONDS = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._known: tuple[set[str], set[str]] = (set(), set())

    def providers(self) -> tuple[set[str], set[str]]:
        """(the providers a live worker can call, those a live worker found without a key)."""
        now = time.monotonic()
        with self._lock:
            if now - self._read_at < self.SECONDS:
                return self._known
        try:
            known = (credentialed_providers(), keyless_providers())
        except RedisError:
            known = (set(), set())  # unknown: nothing is refused
        with self._lock:
            self._known, self._read_at = known, now
        return known

    def reason(self, providers: list[tuple[str, str]]) -> str | None:
        """Why none of `providers` ((name, kind) pairs) can be called now — a worker found each
        without its key, and none has it — or None (a mock needs no key; a provider no worker has
        reported on yet, just added, is given the benefit of the doubt)."""
        if not providers or any(kind == "mock" for _, kind in providers):
            return None
        callable_now, keyless = self.providers()
        if all(name in keyless and name not in callable_now for name, _ in providers):
            return UNAVAILABLE
        return None


callable_providers = CallableProviders()
