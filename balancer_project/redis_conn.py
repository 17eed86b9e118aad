"""Process-wide Redis clients (connection pools are thread-safe; one per process is enough).

redis-py (8.x) caps a connection pool at 100 connections and fails the 101st concurrent command
at once with "Too many connections". A worker runs hundreds of calls on as many threads, and
they end together when an upstream answers a burst: the after-call pipeline of the extra ones
failed, so their clients never heard the result. The threads' pool therefore waits for a free
connection (commands take well under a millisecond). A web process's asyncio pool holds one
connection per streaming client for the whole of its XREAD BLOCK, so it may grow up to Redis's
own default limit of clients instead.

Timeouts are decided here, for every client the project makes: a command that gets no reply
within SOCKET_TIMEOUT_SECONDS fails (Redis is gone or stuck), and a blocking read (XREAD BLOCK)
blocks at most BLOCK_SECONDS, well inside that, so a block that ends with nothing to read is an
empty reply and never a TimeoutError. redis-py's own default is not relied on: 8.x gives the
asyncio client a 5-s socket timeout, which failed every stream that waited longer than 5 s for its
first event while the reader blocked for 15.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel as aiosentinel
import redis.sentinel
from django.conf import settings

from balancer_project.redis_url import SentinelSet, sentinel_set

# Which workers are alive: written by each (completions.workers), read by /ready and `make run`.
WORKERS_KEY = "balancer:workers"

SYNC_CONNECTIONS = 100
ASYNC_CONNECTIONS = 10_000
# How long a command waits for a free connection of a full pool before it fails (this pool's and
# the Celery broker channel's, balancer_project/broker.py).
POOL_WAIT_SECONDS = 30.0
# A reply later than this means Redis is unreachable (the connection is dropped and retried).
SOCKET_TIMEOUT_SECONDS = 10.0
# A sentinel answers "where is the primary" from memory: one that takes longer is skipped for the
# next one.
SENTINEL_TIMEOUT_SECONDS = 2.0
# The longest a blocking read may block: half the socket timeout, so a loaded Redis that answers
# a second late is still an answer.
BLOCK_SECONDS = SOCKET_TIMEOUT_SECONDS / 2

_client: redis.Redis | None = None
_lock = threading.Lock()


_scripts: dict[tuple[int, str], Any] = {}


def registered_script(client: redis.Redis, name: str, source: Callable[[], str]) -> Any:
    """The Lua script `name` (its text from `source()`, read once) registered with `client`:
    redis-py's Script calls EVALSHA and loads it again on NOSCRIPT (after a restart)."""
    key = (id(client), name)
    script = _scripts.get(key)
    if script is None:
        with _lock:
            script = _scripts.get(key) or client.register_script(source())
            _scripts[key] = script
    return script


def decoded(members: Iterable[object]) -> set[str]:
    """The members of a set or sorted set as `get_redis()` returns them (decoded: strings)."""
    return {m for m in members if isinstance(m, str)}


class BlockingSentinelPool(redis.sentinel.SentinelConnectionPool, redis.BlockingConnectionPool):
    """The primary of a Sentinel set, through a pool that waits for a free connection as
    BlockingConnectionPool does (redis-py's Sentinel pool fails the 101st concurrent command)."""


def _sentinels(found: SentinelSet, asynchronous: bool = False) -> Any:
    kind = aiosentinel.Sentinel if asynchronous else redis.sentinel.Sentinel
    timeouts = {
        "socket_timeout": SENTINEL_TIMEOUT_SECONDS,
        "socket_connect_timeout": SENTINEL_TIMEOUT_SECONDS,
    }
    return kind(list(found.sentinels), sentinel_kwargs={**timeouts, **found.sentinel_kwargs()})


def redis_client(url: str, **options: Any) -> redis.Redis:
    """A client of the Redis `url` names, or of the primary of the Sentinel set it names; its
    pool waits for a free connection (up to `max_connections`, SYNC_CONNECTIONS by default)."""
    options = {
        "max_connections": SYNC_CONNECTIONS,
        "timeout": POOL_WAIT_SECONDS,
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": SOCKET_TIMEOUT_SECONDS,
        **options,
    }
    found = sentinel_set(url)
    if found is None:
        return redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(url, **options))
    client: redis.Redis = _sentinels(found).master_for(
        found.service, connection_pool_class=BlockingSentinelPool, **found.server_kwargs(), **options
    )
    return client


def get_redis() -> redis.Redis:
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                _client = redis_client(settings.REDIS_URL, decode_responses=True, health_check_interval=30)
    return _client


_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
    weakref.WeakKeyDictionary()
)


def new_async_redis(url: str, max_connections: int | None = None) -> aioredis.Redis:
    """An asyncio client with the project's timeouts (a pub/sub listener makes its own), of the
    Redis `url` names or of the primary of its Sentinel set."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": SOCKET_TIMEOUT_SECONDS,
        "max_connections": max_connections,
    }
    found = sentinel_set(url)
    if found is None:
        return aioredis.Redis.from_url(url, **options)
    client: aioredis.Redis = _sentinels(found, asynchronous=True).master_for(
        found.service, **found.server_kwargs(), **options
    )
    return client


def get_async_redis() -> aioredis.Redis:
    """The asyncio client of the running event loop (one connection pool per loop)."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = new_async_redis(settings.REDIS_URL, max_connections=ASYNC_CONNECTIONS)
    return client
