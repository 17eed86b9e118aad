"""The operator's endpoints of the app: /ready (it can serve: database, Redis, a live worker) and
/metrics; /health, the process's own liveness, is the project's (balancer_project.health)."""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe

from balancer_project.redis_conn import get_redis
from completions.selectors import cooling_deployments
from completions.workers import live_workers


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
    if not missing:
        # Not a reason to be unready: their requests go to other deployments, or wait.
        try:
            checks["cooling_down"] = cooling_deployments()
        except Exception as exc:
            checks["cooling_down"] = f"error: {exc.__class__.__name__}"
    body = {"status": "ready" if not missing else "not ready", "missing": missing, "checks": checks}
    return JsonResponse(body, status=200 if not missing else 503)
