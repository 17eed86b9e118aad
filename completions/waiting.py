"""Waiting for a request to finish without a thread (or a Redis connection) per waiting client.

Each web process keeps one pub/sub connection subscribed to the completion channel, per event
loop, and a map from request id to the asyncio futures of the clients waiting for it. A waiter
registers its future *before* it reads the row, so an event published after that read cannot be
missed; if the row is already terminal it returns at once. If the listener loses Redis it wakes
every waiter to re-read its row, and until it is back waiters re-read once a second (a degraded
mode that only exists while Redis is unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from django.conf import settings

from completions.events import CHANNEL

logger = logging.getLogger(__name__)

DEGRADED_RECHECK_SECONDS = 1.0


class CompletionListener:
    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.waiters: dict[str, set[asyncio.Future[bool]]] = {}
        self.connected = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self, timeout: float) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._listen())
        if not self.connected.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connected.wait(), timeout)

    def register(self, request_id: str) -> asyncio.Future[bool]:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(request_id, set()).add(future)
        return future

    def unregister(self, request_id: str, future: asyncio.Future[bool]) -> None:
        futures = self.waiters.get(request_id)
        if futures is not None:
            futures.discard(future)
            if not futures:
                del self.waiters[request_id]

    def _wake(self, request_id: str, finished: bool = True) -> None:
        """`finished`: a completion event (the row is terminal); else only "look again"."""
        for future in self.waiters.get(request_id, ()):
            if not future.done():
                future.set_result(finished)

    def _wake_all(self) -> None:
        for request_id in list(self.waiters):
            self._wake(request_id, finished=False)

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            client = aioredis.Redis.from_url(self.redis_url, decode_responses=True)
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(CHANNEL)
                self.connected.set()
                backoff = 0.1
                # Events published while we were not subscribed are lost: let every waiter look.
                self._wake_all()
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    try:
                        request_id = json.loads(message["data"])["id"]
                    except (ValueError, KeyError, TypeError):
                        continue
                    self._wake(request_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("completion listener lost Redis; retrying in %.1f s", backoff, exc_info=True)
            finally:
                self.connected.clear()
                self._wake_all()
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


_listeners: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CompletionListener] = (
    weakref.WeakKeyDictionary()
)


def listener() -> CompletionListener:
    loop = asyncio.get_running_loop()
    found = _listeners.get(loop)
    if found is None:
        found = _listeners[loop] = CompletionListener(settings.REDIS_URL)
    return found


async def wait_until_terminal(
    request_id: str, timeout: float, is_finished: Callable[[], Awaitable[bool]]
) -> None:
    """Return when `is_finished()` (a read of the row) says so, or after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    hub = listener()
    await hub.start(timeout=min(timeout, 2.0))
    while True:
        future = hub.register(request_id)
        try:
            if await is_finished():
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            if not hub.connected.is_set():
                remaining = min(remaining, DEGRADED_RECHECK_SECONDS)
            try:
                if await asyncio.wait_for(future, remaining):
                    return  # a completion event: the row is terminal, no need to read it twice
            except TimeoutError:
                pass
        finally:
            hub.unregister(request_id, future)


async def wait_for_request(request_id: str, timeout: float) -> None:
    """Return when the request is in a terminal state (or gone), or after `timeout` seconds."""
    from asgiref.sync import sync_to_async

    from completions.models import TERMINAL_STATUSES
    from completions.selectors import completion_request_status

    async def is_finished() -> bool:
        current = await sync_to_async(completion_request_status)(request_id=request_id)
        return current is None or current in TERMINAL_STATUSES

    await wait_until_terminal(request_id, timeout, is_finished)
