"""Which workers are alive: each reports itself (a thread of its own, balancer_project.celery)
and /ready counts those that reported lately. Kept apart from everything else, so that the
Celery app and the health checks need nothing above the Redis connection."""

from __future__ import annotations

from django.conf import settings

from balancer_project.redis_conn import get_redis

WORKERS_KEY = "balancer:workers"


def worker_heartbeat(*, hostname: str) -> None:
    """Record, in Redis time, that a worker is alive (read by /ready)."""
    r = get_redis()
    seconds, micros = r.time()
    now = seconds + micros / 1e6
    pipe = r.pipeline()
    pipe.zadd(WORKERS_KEY, {hostname: now})
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
