"""Process-wide Redis clients (connection pools are thread-safe; one per process is enough).

redis-py (8.x) caps a connection pool at 100 connections and fails the 101st concurrent command
at once with "Too many connections". A worker runs hundreds of calls on as many threads, and
they end together when an upstream answers a burst: the after-call pipeline of the extra ones
failed, so their clients never heard the result. The threads' pool therefore waits for a free
connection (commands take well under a millisecond). A web process's asyncio pool holds one
connection per streaming client for the whole of its XREAD BLOCK, so it may grow up to Redis's
own default limit of clients instead.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Iterable

import redis
import redis.asyncio as aioredis
from django.conf import settings

SYNC_CONNECTIONS = 100
ASYNC_CONNECTIONS = 10_000
# How long a command waits for a free connection of a full pool before it fails (this pool's and
# the Celery broker channel's, balancer_project/broker.py).
POOL_WAIT_SECONDS = 30.0

_client: redis.Redis | None = None
_lock = threading.Lock()


def decoded(members: Iterable[object]) -> set[str]:
    """The members of a set or sorted set as `get_redis()` returns them (decoded: strings)."""
    return {m for m in members if isinstance(m, str)}


def get_redis() -> redis.Redis:
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                pool = redis.BlockingConnectionPool.from_url(
                    settings.REDIS_URL,
                    max_connections=SYNC_CONNECTIONS,
                    timeout=POOL_WAIT_SECONDS,
                    decode_responses=True,
                    health_check_interval=30,
                    socket_timeout=10,
                )
                _client = redis.Redis(connection_pool=pool)
    return _client


_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
    weakref.WeakKeyDictionary()
)


def get_async_redis() -> aioredis.Redis:
    """The asyncio client of the running event loop (one connection pool per loop)."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = aioredis.Redis.from_url(
            settings.REDIS_URL, decode_responses=True, max_connections=ASYNC_CONNECTIONS
        )
    return client
