"""Django's PostgreSQL backend, whose pool replaces every dead connection at the first one found.

psycopg_pool checks a connection before lending it, and after each one that fails the check it
waits before trying the next: 0 s, then 1, 2, 4, 8 s... A PostgreSQL restart (or an operator's
pg_terminate_backend) kills every idle connection at once, so a web process with six idle
connections made its next request wait 31 s and answered 500 when the pool's 30-s timeout
passed (tests/completions/test_postgres_restart.py). Here the first failed check tests every
other idle connection on the spot and starts replacing the dead ones, so the retry that follows
gets a live connection at once; the backoff is left for a server that refuses new connections."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base
from psycopg import Connection
from psycopg_pool import ConnectionPool


class SweepOnFailure:
    """A pool's `check`: the standard check, and on failure a sweep of the pool's idle connections
    before the failure is reported (the pool then discards this one and takes the next)."""

    def __init__(self) -> None:
        self.pool: ConnectionPool[Any] | None = None

    def __call__(self, conn: Connection[Any]) -> None:
        try:
            ConnectionPool.check_connection(conn)
        except Exception:
            if self.pool is not None:
                self.pool.check()
            raise


class DatabaseWrapper(base.DatabaseWrapper):
    # Django's, not in its stubs: the pools of every alias, the set-up of each new connection.
    _connection_pools: dict[str, ConnectionPool[Any]]
    _configure_connection: Callable[[Connection[Any]], None]

    @property
    def pool(self) -> ConnectionPool[Any] | None:
        """Django's pool property, with the sweeping check."""
        options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias == NO_DB_ALIAS or not options:
            return None
        if self.alias not in self._connection_pools:
            if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
                raise ImproperlyConfigured("Pooling doesn't support persistent connections.")
            check = SweepOnFailure()
            connect_kwargs = self.get_connection_params()
            connect_kwargs["autocommit"] = True  # as Django's own pool: it sets the mode later
            pool: ConnectionPool[Any] = ConnectionPool(
                kwargs=connect_kwargs,
                open=False,  # opened by the first connection, as Django's
                configure=self._configure_connection,
                check=check if self.settings_dict["CONN_HEALTH_CHECKS"] else None,
                **({} if options is True else options),
            )
            check.pool = pool
            # Two threads may build one each at start-up; the first stored is the one used.
            self._connection_pools.setdefault(self.alias, pool)
        return self._connection_pools[self.alias]
