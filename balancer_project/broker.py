"""kombu's Redis transport, minus a redis-py client object per command, and with a connection
pool that waits instead of failing.

kombu's Redis channel builds a new `redis.Redis` client for every message it publishes and for
every acknowledgement (`conn_or_acquire`), and redis-py builds a table of ~170 response
callbacks in each client's constructor: about a third of the CPU of a Celery publish. A client
holds no connection of its own (it borrows one from the pool per command) and is thread-safe, so
this channel builds it once per connection pool.

A worker acknowledges each message from the thread (or greenlet) that ran its task, so a hundred
tasks ending together make a hundred acknowledgements at once on a pool of `max_connections`
(kombu's default: 10). kombu's plain pool raises "Too many connections" for the eleventh; that
acknowledgement is lost, and the message sits unacked until the visibility timeout redelivers
it. Seen with the gevent pool at 500 tasks (280 lost acknowledgements in one run). This channel's
pool makes the eleventh wait for a free connection instead. Everything else is kombu's.

A channel also remembers its connection parameters. When Redis goes away under a running worker,
Celery closes the broker connection; closing its channel first drops the channel's pools and then
restores the unacknowledged messages, which needs a pool again, built from the transport's
connection info. By then that info is gone (the transport's `client` is None) and kombu raised
"AttributeError: 'NoneType' object has no attribute 'hostname'" out of the close: Celery took it
for an unrecoverable error and every worker exited (kombu issue #582 shows the same error). Here
the pool is built from the parameters the channel last used, so the restore fails as a connection
error, which the close ignores, and the worker reconnects like after any broker outage.

Registered under kombu's own "redis"/"rediss" transport names (celery.py imports this module),
so every URL form (redis://, rediss://, redis+socket://) and Flower's broker page keep working.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis

from balancer_project.redis_conn import POOL_WAIT_SECONDS


class Channel(kombu_redis.Channel):
    _sync_client: Any = None
    _params: dict[bool, dict[str, Any]] | None = None

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self._params is None:
            self._params = {}
        if getattr(self.connection, "client", None) is None:  # the transport was closed
            known = self._params.get(asynchronous)
            if known is None:
                raise redis.exceptions.ConnectionError("the broker connection is closed")
            return dict(known)
        params = super()._connparams(asynchronous=asynchronous)
        self._params[asynchronous] = dict(params)
        return params

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()
        return client

    def _get_pool(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the consumer's own BRPOP/LISTEN connection: one user, kombu's pool
            return super()._get_pool(asynchronous=True)
        params = self._connparams()
        self.keyprefix_fanout = self.keyprefix_fanout.format(db=params["db"])
        return redis.BlockingConnectionPool(timeout=POOL_WAIT_SECONDS, **params)


class Transport(kombu_redis.Transport):
    Channel = Channel


def install() -> None:
    for name in ("redis", "rediss"):
        TRANSPORT_ALIASES[name] = f"{__name__}:Transport"
