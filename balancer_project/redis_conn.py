"""Process-wide Redis clients (connection pools are thread-safe; one per process is enough)."""

from __future__ import annotations

import asyncio
import threading
import weakref

import redis
import redis.asyncio as aioredis
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


_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
    weakref.WeakKeyDictionary()
)


def get_async_redis() -> aioredis.Redis:
    """The asyncio client of the running event loop (one connection pool per loop)."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = aioredis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    return client
