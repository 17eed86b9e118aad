"""Django's ASGI handler, with one trip to the sync thread per request and no thread per request.

Django's ASGIHandler enters a `ThreadSensitiveContext` per request, and asgiref gives each such
context its own executor thread the first time sync code runs. That thread lives until the
response is sent, so a client long-polling for five minutes would hold a thread for five
minutes. Without the context, all thread-sensitive sync code of the process runs on one shared
thread, and a waiting client costs one coroutine and one asyncio future.

Django's handler also crosses between the event loop and that thread three times per request
(request_started, the view, response.close), and each crossing costs more CPU than our views'
own work. Here one crossing runs request_started, the sync middleware chain and the view, and
closes a finished response, on one of BALANCER_WEB_THREADS threads. A view may leave work for the event loop instead of returning its
final response: a response with a `continue_async` coroutine function (see
completions.apis.waitable) is finished by awaiting it here, on the loop, without a thread.

The trade-off: sync work (DB queries, serialisation) of concurrent requests shares those few
threads; it is short, and more web processes add parallelism.
"""

from __future__ import annotations

import asyncio
import contextvars
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers import base
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.http import FileResponse, HttpResponseBase
from django.urls import set_script_prefix

# Headers of the first response that the final one of a continuation keeps (those the
# middleware added), unless it sets them itself.
_OWN_HEADERS = {"content-type", "content-length", "location", "allow"}

# The event loop serving the current request, readable from the sync view (contextvars follow
# sync_to_async): a view can hand work to that loop's helpers (completions.waiting.reply_ticket).
serving_loop: contextvars.ContextVar[asyncio.AbstractEventLoop] = contextvars.ContextVar("serving_loop")


class SharedThreadASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        base.BaseHandler.__init__(self)
        self.load_middleware(is_async=False)
        # A few threads, so that one request's wait for the database (SQLite's write lock, a
        # PostgreSQL round trip) does not stall the next. Each request runs on one of them
        # from request_started to its view's return, so its transactions stay on one thread.
        self.executor = ThreadPoolExecutor(settings.BALANCER_WEB_THREADS, thread_name_prefix="web-sync")
        self.respond_async = sync_to_async(self.respond, thread_sensitive=False, executor=self.executor)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            # uvicorn probes lifespan support; Django has none. Answer it so no error is logged.
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
                message = await receive()
            if message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        await self.handle(scope, receive, send)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        serving_loop.set(asyncio.get_running_loop())

        async def process() -> HttpResponseBase:
            response = await self.respond_async(scope, body_file)
            finish = getattr(response, "continue_async", None)
            if finish is not None:
                response = _inherit(await finish(), response)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client went away while we sent
            return response

        # As Django does: a client that disconnects cancels the view's coroutine (a waiting
        # request leaves its line, see completions.compat).
        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process()),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
            else:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            pass
        else:
            if response.streaming or response._resource_closers:
                await sync_to_async(response.close, thread_sensitive=True)()
            # Otherwise there is nothing to close; request_finished's work (closing unusable
            # database connections) is done by the next request's request_started.
        # The body is closed by `respond`, on its thread, once the view is done with it: a client
        # that goes away cancels the wait here, not the view already running on that thread.

    def respond(self, scope: dict[str, Any], body_file: Any) -> HttpResponseBase:
        """On the sync thread: request_started, the request, middleware and view; a response
        that is complete is closed here too."""
        try:
            signals.request_started.send(sender=self.__class__, scope=scope)
            request, error_response = self.create_request(scope, body_file)
            if request is None:
                return error_response  # type: ignore[no-any-return]
            request.finishes_on_loop = True  # see completions.apis.waitable
            response = self.get_response(request)
        finally:
            # Nothing reads the body after the view (a continuation or a stream does not). Had
            # the client gone before this thread started, the file is left to the collector.
            body_file.close()
        response._handler_class = self.__class__
        if isinstance(response, FileResponse):
            response.block_size = self.chunk_size
        if not response.streaming and getattr(response, "continue_async", None) is None:
            response.close()
        return response  # type: ignore[no-any-return]


def _inherit(final: HttpResponseBase, first: HttpResponseBase) -> HttpResponseBase:
    """The final response of a continuation, with its own Content-Length and the headers and
    cookies the middleware put on the first one (security headers, Vary...)."""
    if not final.streaming:
        # As CommonMiddleware does; it measured the first response, whose content a
        # continuation may have replaced.
        final["Content-Length"] = str(len(final.content))
    if final is first:
        return final
    for name, value in first.items():
        if name.lower() not in _OWN_HEADERS and not final.has_header(name):
            final[name] = value
    for name, morsel in first.cookies.items():
        if name not in final.cookies:
            final.cookies[name] = morsel
    return final
