"""Process-wide Redis clients (connection pools are thread-safe; one per process is enough)."""

from __future__ import annotations

import threading

import redis
from django.conf import settings

_client: redis.Redis | None = None
_lock = threading.Lock()


def get_redis() -> redis.Redis:
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                _client = redis.Redis.from_url(
                    settings.REDIS_URL, decode_responses=True, health_check_interval=30, socket_timeout=10
                )
    return _client
