"""kombu's Redis transport, minus a redis-py client object per command.

kombu's Redis channel builds a new `redis.Redis` client for every message it publishes and for
every acknowledgement (`conn_or_acquire`), and redis-py builds a table of ~170 response
callbacks in each client's constructor: about a third of the CPU of a Celery publish. A client
holds no connection of its own (it borrows one from the pool per command) and is thread-safe, so
this channel builds it once per connection pool. Everything else is kombu's.

Registered under kombu's own "redis"/"rediss" transport names (celery.py imports this module),
so every URL form (redis://, rediss://, redis+socket://) and Flower's broker page keep working.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel


def install() -> None:
    for name in ("redis", "rediss"):
        TRANSPORT_ALIASES[name] = f"{__name__}:Transport"
