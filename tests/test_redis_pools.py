"""The Redis connection pools under more concurrent commands than they have connections: a
worker's hundreds of threads finishing together (the process-wide client, redis-py's default
pool fails past 100) and acknowledging together (the broker channel, kombu's pool fails past
10), and a web process's streaming clients each blocked in XREAD."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

from balancer_project import redis_conn
from balancer_project.redis_conn import get_async_redis, get_redis


def hold_at_once(client: Any, count: int) -> list[Exception]:
    """`count` threads each holding one of `client`'s connections for 0.2 s, all at once; the
    errors they met."""
    key = f"balancer:test:{uuid.uuid4()}"
    errors: list[Exception] = []
    start = threading.Barrier(count)

    def hold() -> None:
        start.wait()
        try:
            client.blpop([key], timeout=0.2)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=hold) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_threads_beyond_the_pool_wait_for_a_connection() -> None:
    client = get_redis()
    assert hold_at_once(client, redis_conn.SYNC_CONNECTIONS + 50) == []
    assert len(client.connection_pool._connections) <= redis_conn.SYNC_CONNECTIONS


def test_the_broker_channel_waits_for_a_connection_instead_of_failing() -> None:
    from balancer_project.celery import app

    with app.connection_for_write(transport_options={"max_connections": 2}) as conn:
        client = conn.default_channel._create_client()  # what publishes and acknowledgements use
        assert hold_at_once(client, 8) == []
        assert len(client.connection_pool._connections) == 2


def test_more_blocked_stream_readers_than_redis_py_allows_by_default() -> None:
    async def main() -> list[object]:
        client = get_async_redis()
        key = f"balancer:test:{uuid.uuid4()}"
        readers = [client.xread({key: "0-0"}, block=300, count=1) for _ in range(150)]
        return await asyncio.gather(*readers, return_exceptions=True)

    results = asyncio.run(main())
    assert [r for r in results if isinstance(r, Exception)] == []
