"""The web's ASGI application (`application`, named by BALANCER_ASGI_APPLICATION): Django's
ASGI handler, with one trip to a sync thread per request and no thread per request, behind the
project's body limit and liveness answer.

Why not Django's own handler (measured, docs/architecture.md: "The web handler"): it enters a
`ThreadSensitiveContext` per request, so every request gets an executor thread of its own that
lives until the response is sent — a client long-polling for five minutes holds a thread for five
minutes — and it crosses between the event loop and that thread four or five times per request.
With async views around the DRF views, the overhead benchmark's added latency went from 4.3 to
6.6–7.1 ms at 50 req/s, and at 200 req/s the web process fell behind (added p50 370–820 ms).

Here, per request:
1. On one of BALANCER_WEB_THREADS threads: request_started, the sync middleware chain and the
   view; a complete response is closed there too (request_finished, on the thread that did the
   request's database work).
2. A `completions.waiting.Pending` response (a view that waits for a completion) is finished on
   the event loop: its `then()` waits without a thread, and its database work runs on the web's
   database threads (`on_db_pool`). The final response keeps the headers the middleware put on
   the first one. It is closed after it was sent, on those threads, which sends request_finished.
3. A client that goes away cancels the waiting (a waiting request leaves its line, see
   completions.compat); request_finished is sent all the same.

The trade-off: sync work (DB queries, serialisation) of concurrent requests shares a few threads;
it is short, and more web processes add parallelism. The price is a dependency on ASGIHandler's
undocumented methods (read_body, create_request, send_response, listen_for_disconnect), which is
why Django is pinned to a minor release in pyproject.toml and tests/test_project.py checks them.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers import base
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.db import close_old_connections
from django.http import FileResponse, HttpResponse, HttpResponseBase
from django.urls import set_script_prefix

from balancer_project.body_limit import BodyLimit
from balancer_project.health import Liveness
from completions.errors import path_error_response
from completions.tokens import warm_up
from completions.waiting import Pending, on_db_pool, serving_loop

# Headers of the first response that the final one of a continuation keeps (those the
# middleware added), unless it sets them itself.
_OWN_HEADERS = {"content-type", "content-length", "location", "allow"}


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

        async def process() -> HttpResponseBase | None:
            """Respond; the response still to be closed (None: closed on its thread)."""
            response, closed = await self.respond_async(scope, body_file)
            pending = response if isinstance(response, Pending) else None
            try:
                if pending is not None:
                    response = _inherit(await pending.then(), pending)
                try:
                    await self.send_response(response, send)
                except asyncio.CancelledError:
                    pass  # the client went away while we sent
            finally:
                if pending is not None:
                    pending.release()  # the wait is over: sent (a stream to its end), or gone
            return None if closed else response

        # As Django does: a client that disconnects cancels the view's coroutine.
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
            unclosed = tasks[1].result()
        except asyncio.CancelledError:
            # Gone before a response was sent: the request is over all the same.
            await on_db_pool(signals.request_finished.send)(sender=self.__class__)
        else:
            if unclosed is not None:
                await on_db_pool(unclosed.close)()
        # The body is closed by `respond`, on its thread, once the view is done with it: a client
        # that goes away cancels the wait here, not the view already running on that thread.

    def respond(self, scope: dict[str, Any], body_file: Any) -> tuple[HttpResponseBase, bool]:
        """On a web thread: request_started, the request, middleware and view; a complete
        response is closed here too (request_finished). Returns it and whether it was closed."""
        try:
            signals.request_started.send(sender=self.__class__, scope=scope)
            request, error_response = self.create_request(scope, body_file)
            if request is None:
                assert error_response is not None
                error_response.close()
                return error_response, True
            response = self.get_response(request)
        finally:
            # Nothing reads the body after the view (a continuation or a stream does not). Had
            # the client gone before this thread started, the file is left to the collector.
            body_file.close()
        if isinstance(response, FileResponse):
            response.block_size = self.chunk_size
        if response.streaming or isinstance(response, Pending):
            # Finished on the loop; this thread's part is over: release its database connection
            # as request_finished would (a pooled one goes back to the pool).
            close_old_connections()
            return response, False
        response.close()
        return response, True


def _inherit(final: HttpResponseBase, first: HttpResponseBase) -> HttpResponseBase:
    """The final response of a continuation, with its own Content-Length and the headers and
    cookies the middleware put on the first one (security headers, Vary...)."""
    if isinstance(final, HttpResponse):
        # As CommonMiddleware does; it measured the first response, whose content a
        # continuation replaces.
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


def application() -> Any:
    """The ASGI application of a web process: /health answered on the event loop (and the probe
    port), request bodies limited while they are read (refused in their API's error shape), then
    this handler. Loads the tokenizer now rather than on the first request (it takes a good part
    of a second)."""
    app = Liveness(BodyLimit(SharedThreadASGIHandler(), error_response=path_error_response))
    warm_up()
    return app
