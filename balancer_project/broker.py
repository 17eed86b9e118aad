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

Registered under kombu's own "redis"/"rediss"/"sentinel" transport names (celery.py imports this
module), so every URL form (redis://, rediss://, redis+socket://, sentinel://) and Flower's broker
page keep working.
"""

from __future__ import annotations

from typing import Any

import celery.app.amqp
import kombu.connection
import redis
import redis.sentinel
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from kombu.utils.url import _parse_url

from balancer_project.redis_conn import POOL_WAIT_SECONDS, BlockingSentinelPool


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


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """The same for kombu's Sentinel channel: its pool of the primary (asked of the sentinels on
    every new connection, so a failover is followed) waits for a free connection too."""

    _sentinels: list[tuple[str, int]] = []

    def _get_pool(self, asynchronous: bool = False) -> Any:
        return kombu_redis.SentinelChannel._get_pool(self, asynchronous=asynchronous)

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._sentinel_managed_pool(asynchronous=True)
        # kombu's own, with the waiting pool (it keeps the Sentinel manager to close it later).
        params = self._connparams()
        params.pop("host", None)
        params.pop("port", None)
        client = getattr(self.connection, "client", None)
        if client is not None:  # else the transport was closed: the sentinels used last (above)
            self._sentinels = [
                (url.hostname, url.port or self.connection.default_port)
                for url in map(_parse_url, client.alt)
                if url.scheme == "sentinel"
            ]
        sentinels = self._sentinels
        manager = self._sentinel_manager = redis.sentinel.Sentinel(
            sentinels, sentinel_kwargs=getattr(self, "sentinel_kwargs", None), **params
        )
        master_name = getattr(self, "master_name", None)
        if master_name is None:
            raise ValueError("'master_name' transport option must be specified.")
        return manager.master_for(
            master_name, connection_pool_class=BlockingSentinelPool, timeout=POOL_WAIT_SECONDS
        ).connection_pool


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


# A worker's consumer reconnects after 2 s, then 4, 6… (kombu's defaults, up to 30): after a
# Sentinel failover of 2–3 s, or a Redis restart, its workers idled for seconds more while the
# new primary already answered. Every half second instead, up to two seconds apart.
RECONNECT_SECONDS = (0.5, 0.5, 2.0)


class Connection(kombu.connection.Connection):
    def ensure_connection(self, *args: Any, **kwargs: Any) -> Any:
        first, step, most = RECONNECT_SECONDS
        kwargs.setdefault("interval_start", first)
        kwargs.setdefault("interval_step", step)
        kwargs.setdefault("interval_max", most)
        return super().ensure_connection(*args, **kwargs)


class AMQP(celery.app.amqp.AMQP):
    """Celery's broker glue, with the connection above (Celery(amqp=...))."""

    Connection = Connection
    BrokerConnection = Connection


def install() -> None:
    for name in ("redis", "rediss"):
        TRANSPORT_ALIASES[name] = f"{__name__}:Transport"
    TRANSPORT_ALIASES["sentinel"] = f"{__name__}:SentinelTransport"
