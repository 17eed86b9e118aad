"""The APIs' middleware: errors as JSON in each API's shape. (Oversized and chunked bodies are
handled below Django, at the ASGI level: balancer_project/body_limit.py.)"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

from completions.errors import flavour_of_path, path_error_response


class _Middleware:
    """Sync and async capable: `handle(request, get_response)` in one place for both chains."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self._acall(request)
        early = self.before(request)
        return early or self.after(request, self.get_response(request))

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        early = self.before(request)
        return early or self.after(request, await self.get_response(request))

    def before(self, request: HttpRequest) -> HttpResponseBase | None:
        return None

    def after(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        return response


class JsonErrorsMiddleware(_Middleware):
    """Under the APIs' paths (/api/, /v1/, /health, /ready, /metrics), an error response that is
    not JSON — Django's 404 and 500 pages (the debug ones too), the CSRF 403, a bare 405 — is
    replaced by a JSON error in the shape of the API the path belongs to, keeping its status and
    its Allow / Retry-After headers. First in MIDDLEWARE, so it sees every other layer's errors.
    The admin's pages are left as they are."""

    def after(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        if response.status_code < 400 or response.streaming:
            return response
        if response.get("Content-Type", "").startswith("application/json"):
            return response
        if flavour_of_path(request.path) is None:
            return response
        status = response.status_code
        message = None
        if status == 405:
            message = (
                f"Method {request.method} is not allowed here; allowed: {response.get('Allow', 'none')}."
            )
        replaced = path_error_response(request.path, status, message)
        for name in ("Allow", "Retry-After", "WWW-Authenticate"):
            if response.has_header(name):
                replaced[name] = response[name]
        return replaced
