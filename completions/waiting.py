"""Waiting for a request to finish, on the event loop, without a Redis connection per waiting client.

A view that must wait (a compatible endpoint holding the call open, `?wait=N` on /api/v1) returns
a `Pending` response: `then` is a coroutine function that waits and produces the final response.
The web's ASGI handler (completions.serving), which sets `serving_loop`, awaits it on
that event loop, so a waiting client costs no thread; under any other handler (WSGI, Django's
test client) `waitable` awaits it before the view returns. Database work after the wait
(`on_db_pool`) runs on a few threads of its own, each closing unusable connections before and
after every job, as request_started and request_finished do for a request's thread.

Each web process keeps one pub/sub connection per event loop, subscribed to the completion
channel (every terminal state, as `{"id", "status"}`) and to a reply channel of its own, and a
map from request id to the asyncio futures of the clients waiting for it.

The fast path (the compatible endpoints): a request submitted through this process carries the
reply channel (`ReplyTicket`, stored in its row); its worker publishes the final result there, and
the waiter answers from that message without reading the database. A result that arrives before
its waiter registers is kept for it (`results`). This is only sound while the subscription was
unbroken from before the request was queued until the waiter registered: the ticket records the
listener's connection epoch, and any other case takes the general path.

The general path: a waiter registers its future *before* it reads the row, so an event published
after that read cannot be missed; if the row is already terminal it returns at once. If the
listener loses Redis it wakes every waiter to re-read its row, and until it is back waiters
re-read once a second (a degraded mode that only exists while Redis is unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import logging
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponseBase
from rest_framework.response import Response

from balancer_project.redis_conn import new_async_redis
from completions.events import CHANNEL, REPLY_PREFIX
from completions.listeners import (
    LISTENER_BEAT_SECONDS,
    LISTENER_RECONNECT_MAX_SECONDS,
    LISTENER_TTL_SECONDS,
    listener_key,
    lost_key,
)
from completions.models import ApiKey
from completions.slots import Slots
from ratelimit.lines import key_quota_of

logger = logging.getLogger(__name__)

DEGRADED_RECHECK_SECONDS = 1.0
# A result whose waiter never came (its client left first) is dropped after this long.
RESULT_KEEP_SECONDS = 60.0


@dataclass(frozen=True)
class ReplyTicket:
    """Where a request's worker sends its result, and the subscription it was issued under."""

    channel: str
    epoch: int


class CompletionListener:
    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.waiters: dict[str, set[asyncio.Future[bool]]] = {}
        self.connected = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.reply_channel = f"{REPLY_PREFIX}{uuid.uuid4().hex}"
        self.epoch = 0  # counts subscriptions; a result published during a gap may be lost
        self.results: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    def ticket(self) -> ReplyTicket | None:
        """A reply ticket, while subscribed (safe to call from any thread)."""
        return ReplyTicket(self.reply_channel, self.epoch) if self.connected.is_set() else None

    def unbroken_since(self, ticket: ReplyTicket) -> bool:
        return ticket.channel == self.reply_channel and ticket.epoch == self.epoch and self.connected.is_set()

    def _keep_result(self, result: dict[str, Any]) -> None:
        now = time.monotonic()
        self.results[result["id"]] = (now, result)
        while self.results:
            oldest_at, _ = next(iter(self.results.values()))
            if now - oldest_at < RESULT_KEEP_SECONDS:
                break
            self.results.popitem(last=False)
        self._wake(result["id"])

    def take_result(self, request_id: str) -> dict[str, Any] | None:
        kept = self.results.pop(request_id, None)
        return None if kept is None else kept[1]

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
        lost_at: float | None = None  # when the listener lost Redis, until it is back
        while True:
            client = new_async_redis(self.redis_url)
            beat: asyncio.Task[None] | None = None
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(CHANNEL, self.reply_channel)
                self.epoch += 1
                self.connected.set()
                backoff = 0.1
                if lost_at is not None:
                    logger.warning("completion listener back after %.1f s", time.monotonic() - lost_at)
                    lost_at = None
                beat = asyncio.get_running_loop().create_task(self._beat(client))
                # Events published while we were not subscribed are lost: let every waiter look.
                self._wake_all()
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    try:
                        head, _, body = message["data"].partition("\n")
                        event = json.loads(head)
                        request_id = event["id"]
                    except (ValueError, KeyError, TypeError, AttributeError):
                        continue
                    if body:
                        event["body"] = body  # the response, still encoded
                    if message["channel"] == self.reply_channel:
                        self._keep_result(event)
                    else:
                        self._wake(request_id)
            except asyncio.CancelledError:
                # The process stops: its calls are no longer held (their requests are cancelled
                # before any upstream call), rather than at the end of the key's TTL.
                with contextlib.suppress(Exception):
                    await client.delete(listener_key(self.reply_channel))
                raise
            except Exception:
                # Once per outage: it tries again every second or so until Redis is back.
                if lost_at is None:
                    lost_at = time.monotonic()
                    logger.warning("completion listener lost Redis; retrying", exc_info=True)
            finally:
                self.connected.clear()
                self._wake_all()
                if beat is not None:
                    beat.cancel()
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(backoff)
            # Within the grace a worker gives a missing subscription (completions.listeners).
            backoff = min(backoff * 2, LISTENER_RECONNECT_MAX_SECONDS)

    async def _beat(self, client: aioredis.Redis) -> None:
        """Say, while subscribed, that this process holds its clients' calls (completions.listeners)."""
        key, lost = listener_key(self.reply_channel), lost_key(self.reply_channel)
        while True:
            with contextlib.suppress(Exception):  # Redis away: the listener reconnects
                pipe = client.pipeline(transaction=False)
                pipe.set(key, "1", ex=LISTENER_TTL_SECONDS)
                pipe.delete(lost)  # subscribed again: a gap a worker noticed is over
                await pipe.execute()
            await asyncio.sleep(LISTENER_BEAT_SECONDS)


_listeners: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CompletionListener] = (
    weakref.WeakKeyDictionary()
)


def listener() -> CompletionListener:
    loop = asyncio.get_running_loop()
    found = _listeners.get(loop)
    if found is None:
        found = _listeners[loop] = CompletionListener(settings.REDIS_URL)
    return found


# The event loop serving the current request, readable from the sync view (contextvars follow
# sync_to_async): set by the project's ASGI handler, which finishes `Pending` responses on it.
serving_loop: contextvars.ContextVar[asyncio.AbstractEventLoop] = contextvars.ContextVar("serving_loop")


def reply_ticket() -> ReplyTicket | None:
    """From the sync part of a `waitable` view: a ticket of the listener of the event loop serving
    this request, when that listener is subscribed (else None: the waiter takes the general path)."""
    loop = serving_loop.get(None)
    hub = _listeners.get(loop) if loop is not None else None
    return hub.ticket() if hub is not None else None


async def wait_for_result(
    request_id: str, timeout: float, ticket: ReplyTicket | None
) -> dict[str, Any] | None:
    """The result the request's worker published to this process's reply channel, or None when
    the database must be read instead (the result may have been missed, or was never sent: the
    request was cancelled or expired, or the wait timed out)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    hub = listener()
    await hub.start(timeout=min(timeout, 2.0))
    if ticket is not None and hub.unbroken_since(ticket):
        future = hub.register(request_id)
        try:
            if request_id not in hub.results:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(future, max(0.0, deadline - loop.time()))
        finally:
            hub.unregister(request_id, future)
        result = hub.take_result(request_id)
        if result is not None:
            return result
    await wait_for_request(request_id, max(0.0, deadline - loop.time()))
    return hub.take_result(request_id)


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
    from completions.models import TERMINAL_STATUSES
    from completions.selectors import completion_request_status

    async def is_finished() -> bool:
        current = await on_db_pool(completion_request_status)(request_id=request_id)
        return current is None or current in TERMINAL_STATUSES

    await wait_until_terminal(request_id, timeout, is_finished)


class Pending(Response):
    """A response that is not the last word: `waitable` awaits `then()` on the event loop and sends
    what it returns instead. Until then it is an ordinary 202 (status, data, headers), so the DRF
    view that returns it runs its whole usual path (exceptions, content negotiation)."""

    def __init__(
        self,
        then: Callable[[], Awaitable[HttpResponseBase]],
        data: Any = None,
        status: int = 202,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(data, status=status, headers=headers)
        self.then = then
        self._release: weakref.finalize[Any, Pending] | None = None

    def hold(self, release: Callable[[], None]) -> None:
        """`release` runs once this wait is over: after its final response was sent (a stream to
        its end), or when the client went away — or, failing both, when this object is collected,
        so a wait slot is never lost."""
        self._release = weakref.finalize(self, release)

    def release(self) -> None:
        if self._release is not None:
            self._release()


class WaitSlots(Slots):
    """How many waits (long-polls, compatible calls, streams) each key holds in this process, up
    to its cap: thousands of connections from one key cannot take a web process from the others.
    Per process, so the cap of a deployment is this times its web processes."""

    def take_for(self, api_key: ApiKey) -> Callable[[], None] | None:
        """A slot for one more wait: the function that gives it back, or None at the key's cap."""
        key_quota = key_quota_of(api_key)
        cap = settings.BALANCER_KEY_MAX_WAITING
        if key_quota is not None and key_quota.max_waiting is not None:
            cap = key_quota.max_waiting
        return self.take(api_key.pk, cap)


wait_slots = WaitSlots()


def waitable(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """A view that may return a `Pending`: finished here, unless the project's ASGI handler serves
    the request and finishes it on its event loop."""

    @functools.wraps(view)  # keeps csrf_exempt and the schema's view attributes
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response = view(request, *args, **kwargs)
        if isinstance(response, Pending) and serving_loop.get(None) is None:
            try:
                return async_to_sync(response.then)()
            finally:
                response.release()
        return response

    return wrapper


P = ParamSpec("P")
T = TypeVar("T")

_db_pool: ThreadPoolExecutor | None = None


def _db_executor() -> ThreadPoolExecutor:
    global _db_pool
    if _db_pool is None:
        _db_pool = ThreadPoolExecutor(settings.BALANCER_WEB_DB_THREADS, thread_name_prefix="web-db")
    return _db_pool


def on_db_pool(fn: Callable[P, T]) -> Callable[P, Awaitable[T]]:
    """`fn` as a coroutine function that runs on the web's database threads (BALANCER_WEB_DB_THREADS).

    For the database work of a request that waited: not on asgiref's one thread-sensitive thread
    (where every such read of the process would queue), nor on the request's own thread. Each job
    starts and ends as a request does, closing connections that are broken or too old: after a
    database restart the next job reconnects instead of failing with the dead connection."""

    def job(*args: P.args, **kwargs: P.kwargs) -> T:
        close_old_connections()
        try:
            return fn(*args, **kwargs)
        finally:
            close_old_connections()

    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return await sync_to_async(job, thread_sensitive=False, executor=_db_executor())(*args, **kwargs)

    return run
