"""A lean HTTP/1.1 load generator for the benchmarks (keep-alive, one asyncio loop).

httpx spends about a millisecond of CPU per request; on a 2-core machine that would be measured
as the balancer's cost. This client writes pre-built request bytes and parses only the status
line, Content-Length and body, so nearly all the CPU of a run is the balancer's.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


def build_request(
    host: str, port: int, path: str, body: bytes, headers: dict[str, str], method: str = "POST"
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}:{port}"]
    if method == "POST":
        lines += ["content-type: application/json", f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if len(self.buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        body = self.buffer[end + 4 : end + 4 + length]
        self.buffer = self.buffer[end + 4 + length :]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, body))

    async def request(self, data: bytes) -> tuple[int, bytes]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)  # type: ignore[attr-defined]
        return await self.waiter


@dataclass
class Pool:
    host: str
    port: int
    idle: list[Connection] = field(default_factory=list)

    async def request(self, data: bytes, timeout: float = 120) -> tuple[int, bytes]:
        conn = None
        while self.idle and conn is None:
            conn = self.idle.pop()
            if conn.closed:
                conn = None
        if conn is None:
            _, conn = await asyncio.get_running_loop().create_connection(Connection, self.host, self.port)
        try:
            result = await asyncio.wait_for(conn.request(data), timeout)
        except BaseException:
            conn.transport.close()  # type: ignore[attr-defined]
            raise
        self.idle.append(conn)
        return result

    def close(self) -> None:
        for conn in self.idle:
            conn.transport.close()  # type: ignore[attr-defined]
        self.idle.clear()


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0


async def _one(pool: Pool, data: bytes, result: Result, timeout: float = 120) -> None:
    started = time.monotonic()
    try:
        status, body = await pool.request(data, timeout)
    except (OSError, ConnectionError, TimeoutError) as exc:
        result.errors.append(exc.__class__.__name__)
        return
    if status != 200:
        result.errors.append(f"HTTP {status}: {body[:200]!r}")
        return
    result.latencies.append(time.monotonic() - started)


async def open_loop(host: str, port: int, data: bytes, rate: float, seconds: float) -> Result:
    """Send at a fixed rate regardless of answers."""
    pool, result, tasks = Pool(host, port), Result(), []
    start = time.monotonic()
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        tasks.append(asyncio.create_task(_one(pool, data, result)))
    await asyncio.gather(*tasks)
    result.elapsed = time.monotonic() - start
    pool.close()
    return result


async def closed_loop(host: str, port: int, data: bytes, clients: int, seconds: float) -> Result:
    """`clients` senders, each sending its next request when its last one is answered."""
    pool, result = Pool(host, port), Result()
    deadline = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < deadline:
            await _one(pool, data, result)

    start = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    result.elapsed = time.monotonic() - start
    pool.close()
    return result


async def at_once(host: str, port: int, data: bytes, count: int, timeout: float = 120) -> Result:
    """`count` requests sent at the same moment, each on its own connection."""
    pool, result = Pool(host, port), Result()
    start = time.monotonic()
    await asyncio.gather(*(_one(pool, data, result, timeout) for _ in range(count)))
    result.elapsed = time.monotonic() - start
    pool.close()
    return result
