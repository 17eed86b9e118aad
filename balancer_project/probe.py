"""The liveness probe port: `python balancer_project/probe.py HOST PORT STALL_SECONDS`, a small
process of each web process's own (balancer_project.health.ProbePort starts it).

It answers `GET /health` in milliseconds however busy the web is: it shares neither the web's
event loop (busy accepting thousands of connections) nor its interpreter lock (held for hundreds
of milliseconds at a time under such a storm — a thread of the web process was measured). It is
still a check of the web: the web's event loop writes a byte to this process's stdin once a
second, and the probe answers 503 once none has come for STALL_SECONDS. When the web exits, for
whatever reason, stdin closes and this process ends with it.

Prints "ready" once the port is bound; a port it cannot bind ends it at once with the reason on
stderr. Imports nothing of Django: it starts in a fraction of a second and holds a few MiB."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from http import HTTPStatus

HEARTBEAT_SECONDS = 1.0  # how often the web writes; the silence tolerated is on top of this
READ_SECONDS = 5.0  # a client that sends no request is dropped after this


class Probe:
    def __init__(self, stall_seconds: float) -> None:
        self.stall_seconds = stall_seconds
        self.last_seen = time.monotonic()

    def verdict(self) -> tuple[int, dict[str, object]]:
        silent = max(0.0, time.monotonic() - self.last_seen - HEARTBEAT_SECONDS)
        if silent < self.stall_seconds:
            return 200, {"status": "ok"}
        return 503, {"status": "stalled", "event_loop_silent_seconds": round(silent, 1)}

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_SECONDS)
            method, path = (head.split(b"\r\n", 1)[0].split(b" ") + [b"", b""])[:2]
            body: dict[str, object]
            if path.split(b"?", 1)[0] != b"/health":
                status, body = 404, _error("not_found", "Only GET /health is served on this port.")
            elif method not in (b"GET", b"HEAD"):
                status, body = 405, _error("method_not_allowed", "Use GET or HEAD.")
            else:
                status, body = self.verdict()
            data = json.dumps(body).encode()
            writer.write(
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(data)}\r\nconnection: close\r\n\r\n".encode()
                + (data if method != b"HEAD" else b"")
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a client that went away or sent no request: nothing to answer
        finally:
            writer.close()

    async def follow(self, web: asyncio.StreamReader) -> None:
        """Stamp every heartbeat of the web; return when its end of the pipe closes."""
        while await web.read(4096):
            self.last_seen = time.monotonic()


def _error(type_: str, message: str) -> dict[str, object]:
    """The shape of the balancer's own API errors (completions.errors.error_body)."""
    return {"error": {"type": type_, "message": message}}


def listen(host: str, port: int) -> socket.socket:
    """Every web process of a multi-process uvicorn has a probe of its own on the same port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


async def serve(sock: socket.socket, stall_seconds: float) -> None:
    probe = Probe(stall_seconds)
    loop = asyncio.get_running_loop()
    web = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(web), sys.stdin)
    server = await asyncio.start_server(probe.answer, sock=sock, limit=8192)
    async with server:
        print("ready", flush=True)
        await probe.follow(web)


def main() -> int:
    host, port, stall_seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    try:
        sock = listen(host, port)
    except OSError as exc:
        print(f"cannot listen on {host}:{port}: {exc}", file=sys.stderr, flush=True)
        return 1
    asyncio.run(serve(sock, stall_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
