"""Request bodies at the ASGI level, below Django: the size limit enforced while reading, and
chunked bodies made whole.

- A Content-Length over BALANCER_MAX_BODY_BYTES is answered 413 before a byte of the body is
  read. A body sent without one (`Transfer-Encoding: chunked`, as some clients and proxies
  send) is read here up to the limit — one byte more and it is answered 413, with no more read
  or kept — and then handed on with the Content-Length it turned out to have: Django reads a body
  only as far as its Content-Length says, so a chunked one would otherwise reach the views as
  empty.
- The 413 is JSON in the shape of the API the path belongs to (completions.errors).

Only ASGI, the ASGI spec and Django's public response class are used: it wraps whichever Django
handler serves the requests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.conf import settings
from django.http import HttpResponse

Scope = dict[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
# The refusal for a path, in the shape its API answers errors in: (path, status, message).
ErrorResponse = Callable[[str, int, str], HttpResponse]


# Paths that take a batch's input, up to BALANCER_BATCH_FILE_MAX_BYTES (a multipart upload's
# framing included).
BATCH_INPUT_PATHS = ("/v1/files", "/v1/messages/batches")


def body_limit(path: str) -> int:
    if path in BATCH_INPUT_PATHS:
        return int(settings.BALANCER_BATCH_FILE_MAX_BYTES) + 64 * 1024
    return int(settings.BALANCER_MAX_BODY_BYTES)


class BodyLimit:
    def __init__(self, app: App, *, error_response: ErrorResponse) -> None:
        self.app = app
        self.error_response = error_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(scope.get("path", ""))
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _refuse(self.error_response, scope, send, 400, "Invalid Content-Length.")
                return
            if int(declared) > limit:
                await _refuse(
                    self.error_response,
                    scope,
                    send,
                    413,
                    f"Request body is {int(declared)} bytes; the limit is {limit}.",
                )
                return
            await self.app(scope, receive, send)
            return
        if _header(scope, b"transfer-encoding") is None:
            await self.app(scope, receive, send)  # no body at all
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # gone before the body was whole: nothing to answer
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                await _refuse(
                    self.error_response, scope, send, 413, f"Request body is over the limit of {limit} bytes."
                )
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        whole = b"".join(chunks)
        headers = [
            (k, v) for k, v in scope["headers"] if k.lower() not in (b"transfer-encoding", b"content-length")
        ]
        headers.append((b"content-length", str(len(whole)).encode()))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app({**scope, "headers": headers}, replay, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1").strip()
    return None


async def _refuse(error_response: ErrorResponse, scope: Scope, send: Send, status: int, message: str) -> None:
    response = error_response(scope.get("path", ""), status, message)
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.items()]
    headers.append((b"content-length", str(len(response.content)).encode()))
    headers.append((b"connection", b"close"))  # the rest of the body is not read
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": response.content})
