"""The process-wide Redis clients under more concurrent commands than redis-py's default pool
allows (100): a worker's hundreds of threads finishing together, a web process's streaming
clients each blocked in XREAD."""

from __future__ import annotations

import asyncio
import threading
import uuid

from balancer_project import redis_conn
from balancer_project.redis_conn import get_async_redis, get_redis


def test_threads_beyond_the_pool_wait_for_a_connection() -> None:
    client = get_redis()
    key = f"balancer:test:{uuid.uuid4()}"
    threads_count = redis_conn.SYNC_CONNECTIONS + 50
    errors: list[Exception] = []
    start = threading.Barrier(threads_count)

    def hold() -> None:
        start.wait()
        try:  # each holds a connection for 0.2 s
            client.blpop([key], timeout=0.2)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=hold) for _ in range(threads_count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(client.connection_pool._connections) <= redis_conn.SYNC_CONNECTIONS


def test_more_blocked_stream_readers_than_redis_py_allows_by_default() -> None:
    async def main() -> list[object]:
        client = get_async_redis()
        key = f"balancer:test:{uuid.uuid4()}"
        readers = [client.xread({key: "0-0"}, block=300, count=1) for _ in range(150)]
        return await asyncio.gather(*readers, return_exceptions=True)

    results = asyncio.run(main())
    assert [r for r in results if isinstance(r, Exception)] == []
