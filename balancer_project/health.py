"""/health (the process is up) and /ready (it can serve: database, Redis, a live worker)."""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe

from balancer_project.redis_conn import get_redis
from completions.selectors import live_workers

HEALTHY = b'{"status": "ok"}'


@csrf_exempt  # a POST gets its 405, not a CSRF 403
@require_safe
def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


class Liveness:
    """`GET /health` answered on the event loop, in front of Django: liveness means the loop
    answers, and a probe must not queue behind views on the web threads (thousands of clients
    connecting at once kept it waiting 24 s). Every other request, a POST to /health included
    (its JSON 405), goes on to `app`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/health" and scope["method"] in ("GET", "HEAD"):
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(HEALTHY)).encode()),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": HEALTHY if scope["method"] == "GET" else b""})
            return
        await self.app(scope, receive, send)


@csrf_exempt
@require_safe
def ready(request: HttpRequest) -> JsonResponse:
    checks: dict[str, Any] = {}
    missing: list[str] = []
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {exc.__class__.__name__}"
        missing.append("database")
    try:
        get_redis().ping()
        checks["redis"] = "ok"
        workers = live_workers()
        checks["workers"] = workers
        if not workers:
            missing.append("worker")
    except Exception as exc:
        checks["redis"] = f"error: {exc.__class__.__name__}"
        missing.extend(["redis", "worker"])
    body = {"status": "ready" if not missing else "not ready", "missing": missing, "checks": checks}
    return JsonResponse(body, status=200 if not missing else 503)
