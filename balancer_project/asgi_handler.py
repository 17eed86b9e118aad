"""Django's ASGI handler, minus the thread per request.

Django's ASGIHandler enters a `ThreadSensitiveContext` per request, and asgiref gives each such
context its own executor thread the first time sync code runs (Django's own request_started
signal already does). That thread lives until the response is sent, so a client long-polling
for five minutes holds a thread for five minutes. Without the context, all thread-sensitive sync
code of the process runs on one shared thread, and a waiting client costs one coroutine and one
asyncio future. The trade-off: sync work (DB queries, serialisation) of concurrent requests runs
one at a time per process; it is short, and more web processes add parallelism.
"""

from __future__ import annotations

from typing import Any

from django.core.handlers.asgi import ASGIHandler


class SharedThreadASGIHandler(ASGIHandler):
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
