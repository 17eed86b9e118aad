"""Which workers are alive: each reports itself (a thread of its own, balancer_project.celery)
and /ready counts those that reported lately. Kept apart from everything else, so that the
Celery app and the health checks need nothing above the Redis connection."""

from __future__ import annotations

from django.conf import settings

from balancer_project.redis_conn import WORKERS_KEY, get_redis

# Set by the tend when it finds Redis without it (new, or restarted without its data): its value
# is when (Unix time), so readers know how long ago Redis's state began.
EPOCH_KEY = "balancer:epoch"
# Provider name -> the last time (Redis time) a worker found its key readable.
CREDENTIALS_KEY = "balancer:credentials"


def worker_heartbeat(*, hostname: str, credentialed: list[str] | None = None) -> None:
    """Record, in Redis time, that a worker is alive (read by /ready), and the providers whose
    key it can read (`credentialed`, when given: names only, never a key)."""
    r = get_redis()
    seconds, micros = r.time()
    now = seconds + micros / 1e6
    pipe = r.pipeline()
    pipe.zadd(WORKERS_KEY, {hostname: now})
    if credentialed:
        pipe.hset(CREDENTIALS_KEY, mapping=dict.fromkeys(credentialed, f"{now:.3f}"))
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
    r = get_redis()
    seconds, micros = r.time()
    now = seconds + micros / 1e6
    # A worker reports every few beats; a provider not reported for ten beats has lost its key.
    stale = 10 * max(settings.BALANCER_WORKER_REFRESH_SECONDS * 5, 1.0)
    seen: dict[str, str] = r.hgetall(CREDENTIALS_KEY)  # type: ignore[assignment]  # decoded replies
    return {name for name, at in seen.items() if now - float(at) < stale}
