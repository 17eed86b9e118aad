"""GET /dashboard/: every line live, for staff. The page (admin look, no CDN: its script and style
are the project's static files) asks /dashboard/state.json every second or two and redraws.

What it shows per model group and per model addressed directly: requests waiting (in the line,
and as rows: queued and running), the broker's messages in the line's queue (what Flower's broker
page would show, had it the model queues), in-flight calls, each bucket's level against its
size, the limits in force, upstream calls per minute, utilisation of the limits now and over
the last hour, queue wait p50/p99 over the last five minutes, 429s and other upstream errors in
the last hour, cooldowns; and per client key (flow) of a group: waiting, share and wait.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from balancer_project.redis_conn import get_redis
from completions import history
from completions.lines import model_line, quota_get
from completions.models import ApiKey, CompletionRequest, CompletionStatus
from completions.queues import group_line_status, served_line_status
from completions.selectors import model_groups_served, served_models_list
from completions.workers import live_workers

POLL_SECONDS = 1.5
# Queue-wait percentiles over this many recent minutes (the current one included).
WAIT_MINUTES = 5
HOUR = 60
# A bucket's per-minute rate, by the name of the cost it bounds (as the limiter names buckets).
COSTS = ("requests", "tokens", "input_tokens", "output_tokens")


class _Recent:
    """The last hour of each deployment, as the dashboard reads it."""

    def __init__(self, now: float) -> None:
        # One more minute than an hour: sixty complete minutes, and the current one.
        self.current, self.series = history.last_hour(now, minutes=HOUR + 1)
        self.fraction = (now % 60) / 60

    def minutes(self, model: str) -> list[history.Minute]:
        return self.series.get(model) or [history.Minute() for _ in range(HOUR + 1)]

    @staticmethod
    def costs(m: history.Minute) -> dict[str, float]:
        return {
            "requests": m.calls,
            "tokens": m.tokens,
            "input_tokens": m.input_tokens,
            "output_tokens": m.output_tokens,
        }

    def per_minute_now(self, model: str) -> dict[str, float]:
        """Each cost's rate over the last sixty seconds: the current minute, and the part of the
        one before that is still inside the window."""
        *_, before, now = self.minutes(model)
        b, n = self.costs(before), self.costs(now)
        return {k: round(n[k] + b[k] * (1 - self.fraction), 1) for k in COSTS}

    def figures(self, models: list[str], in_force: dict[str, dict[str, float]]) -> dict[str, Any]:
        """Calls per minute, utilisation (now and a point per complete minute), waits, 429s and
        errors of `models` together (`in_force`: each one's limits per minute)."""
        minutes = [self.minutes(m) for m in models]
        hour = [m for series in minutes for m in series[1:]]  # the last 60 minutes, this one included
        recent = [m for series in minutes for m in series[-WAIT_MINUTES:]]
        rates = [self.per_minute_now(m) for m in models]
        limited = [limits for limits in (in_force.get(m) or {} for m in models) if limits]

        def utilisation(costs: list[dict[str, float]]) -> float | None:
            # Pooled over the deployments: what they used against what they may use.
            if not limited:
                return None
            used = {
                k: sum(c[k] for c, m in zip(costs, models, strict=True) if in_force.get(m)) for k in COSTS
            }
            cap = {k: sum(limits.get(k) or 0 for limits in limited) for k in COSTS}
            shares = [used[k] / cap[k] for k in COSTS if cap[k] and all((lim.get(k) or 0) for lim in limited)]
            return round(100 * max(shares), 1) if shares else None

        return {
            "calls_per_minute": round(sum(r["requests"] for r in rates), 1),
            "tokens_per_minute": round(sum(r["tokens"] for r in rates), 1),
            "utilisation_percent": utilisation(rates),
            "queue_wait_p50_seconds": _rounded(history.percentile(recent, 0.5)),
            "queue_wait_p99_seconds": _rounded(history.percentile(recent, 0.99)),
            "rate_limited_last_hour": sum(m.rate_limited for m in hour),
            "errors_last_hour": sum(m.errors for m in hour),
            "calls_last_hour": sum(m.calls for m in hour),
            # A point a minute, oldest first: 59 minutes that ended, then the last 60 seconds.
            "calls_by_minute": [sum(s[i].calls for s in minutes) for i in range(1, HOUR)]
            + [round(sum(r["requests"] for r in rates), 1)],
            "utilisation_by_minute": [
                utilisation([self.costs(s[i]) for s in minutes]) for i in range(1, HOUR)
            ]
            + [utilisation(rates)],
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _in_force(state: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in (state.get("limits_in_force_per_minute") or {}).items() if k in COSTS}


def _queue_depths(queues: list[str]) -> dict[str, int]:
    """Messages in each Celery queue (the Redis broker keeps a queue as a list of its name)."""
    pipe = get_redis().pipeline(transaction=False)
    for q in queues:
        pipe.llen(q)
    return dict(zip(queues, (int(n) for n in pipe.execute()), strict=True))


def _rows_by_line() -> dict[tuple[str, str], dict[str, int]]:
    """Requests queued and running, by ("group", name) or ("model", provider/model)."""
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: {"queued": 0, "running": 0})
    rows = (
        CompletionRequest.objects.filter(status__in=[CompletionStatus.QUEUED, CompletionStatus.RUNNING])
        .values("group", "provider", "model", "status")
        .annotate(n=Count("id"))
    )
    for row in rows:
        where = ("group", row["group"]) if row["group"] else ("model", f"{row['provider']}/{row['model']}")
        counts[where][row["status"]] += row["n"]
    return counts


def dashboard_state(now: float | None = None) -> dict[str, Any]:
    """Everything the dashboard shows, as of now."""
    now = time.time() if now is None else now
    recent = _Recent(now)
    rows = _rows_by_line()
    groups_served = model_groups_served()
    models = served_models_list()
    default_queue = str(settings.CELERY_TASK_DEFAULT_QUEUE)
    depths = _queue_depths(
        sorted({g.queue_name for g in groups_served} | {m.queue_name for m in models} | {default_queue})
    )
    names = dict(ApiKey.objects.values_list("id", "name"))

    groups = []
    for group in groups_served:
        state = group_line_status(group=group, deployments=group.deployments_served)
        deployments, in_force = [], {}
        for served, dep in zip(group.deployments_served, state["deployments"], strict=True):
            name = str(served)
            in_force[name] = _in_force(dep)
            deployments.append({"name": name, **dep, **recent.figures([name], in_force)})
        for flow in state["flows"]:
            flow["name"] = names.get(int(flow["flow"]), "?") if flow["flow"].isdigit() else flow["flow"]
            flow.pop("yours", None)
        groups.append(
            {
                **state,
                "name": group.name,
                "rows": rows.get(("group", group.name), {"queued": 0, "running": 0}),
                "broker_messages": depths.get(group.queue_name, 0),
                **recent.figures(list(in_force), in_force),
                "deployments": deployments,
            }
        )

    lines = []
    for served in models:
        state = served_line_status(served_model=served, quota=quota_get(served_model=served))
        name = model_line(served)
        lines.append(
            {
                **state,
                "name": name,
                "group": served.group.name if served.group else None,
                "rows": rows.get(("model", name), {"queued": 0, "running": 0}),
                "broker_messages": depths.get(served.queue_name, 0),
                **recent.figures([name], {name: _in_force(state)}),
            }
        )
    return {
        "now": timezone.now().isoformat(),
        "poll_seconds": POLL_SECONDS,
        "workers": len(live_workers()),
        # Housekeeping tasks and key lines' wake-ups.
        "default_queue_messages": depths[default_queue],
        "groups": groups,
        "models": lines,
    }


@staff_member_required
@never_cache
@require_safe
def dashboard_page(request: HttpRequest) -> HttpResponse:
    """The page; its script fetches the state."""
    context = {
        **admin.site.each_context(request),
        "title": "Live dashboard",
        "poll_ms": int(POLL_SECONDS * 1000),
        "poll_seconds": POLL_SECONDS,
    }
    return render(request, "completions/dashboard.html", context)


@never_cache
@require_safe
def dashboard_state_view(request: HttpRequest) -> HttpResponse:
    """The state as JSON, for staff signed in to the admin (session cookie)."""
    user = request.user
    if not (user.is_active and user.is_staff):
        return JsonResponse(
            {
                "error": {
                    "message": "Sign in to the admin as staff to read the dashboard.",
                    "type": "forbidden",
                }
            },
            status=403,
        )
    return JsonResponse(dashboard_state())
