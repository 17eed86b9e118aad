"""GET /admin/dashboard/: every line live, for staff. The page (admin look, no CDN: its script and
style are the project's static files) asks /admin/dashboard/state.json every 1.5 s and redraws.

What the state holds per model group and per model addressed directly: requests waiting in the
line, and as rows (queued and running), the broker's messages in the line's queue (what
Flower's broker page counts), in-flight calls, each bucket's level against its size, the limits
in force, the limiter's grant count (the page turns it into grants per minute) and upstream
calls per minute, utilisation of the limits now and per minute over the last hour (history.py),
queue wait p50/p99 over the last five minutes, 429s and other upstream errors in the last hour,
cooldowns; per client key (flow) of a group: waiting, share and wait; and per client key with a
rate limit of its own, its line.

Who may read it: staff with the permission to view served models (DASHBOARD_PERMISSION;
superusers have it). Client keys appear by name only to those who may also view API keys
(KEY_NAMES_PERMISSION); to the others a key is its number, "#<id>".
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.gzip import gzip_page
from django.views.decorators.http import require_safe
from redis.exceptions import RedisError

from balancer_project.celery import queue_depths
from completions import history
from completions.lines import model_line, quota_get
from completions.models import ApiKey, Budget, CompletionRequest, CompletionStatus
from completions.queues import group_line_status, served_line_status
from completions.selectors import model_groups_served, served_models_list
from completions.spend import budget_states, from_micro
from completions.workers import live_workers
from ratelimit.limiter import LineStatus
from ratelimit.lines import key_line
from ratelimit.models import KeyQuota
from ratelimit.selectors import key_line_status, line_statuses

DASHBOARD_PERMISSION = "completions.view_servedmodel"
KEY_NAMES_PERMISSION = "completions.view_apikey"
POLL_SECONDS = 1.5
# Requests queued and running are counted in the database at most this often (see _RowCounts).
ROWS_SECONDS = 5.0
HOUR = 60
# A bucket's per-minute rate, by the name of the cost it bounds (as the limiter names buckets).
COSTS = ("requests", "tokens", "input_tokens", "output_tokens")


class _Recent:
    """The last hour of each deployment, as the dashboard reads it."""

    def __init__(self, now: float) -> None:
        # One more minute than an hour: sixty complete minutes, and the current one.
        _, self.series = history.last_hour(now, minutes=HOUR + 1)
        self.fraction = (now % 60) / 60
        self.empty = history.Series.empty(HOUR + 1)

    def costs(self, model: str) -> dict[str, list[int]]:
        """Each cost a limit may bound, per minute."""
        s = self.series.get(model) or self.empty
        return {
            "requests": s.calls,
            "tokens": s.tokens,
            "input_tokens": s.counts["input"],
            "output_tokens": s.counts["output"],
        }

    def per_minute_now(self, costs: dict[str, list[int]]) -> dict[str, float]:
        """Each cost's rate over the last sixty seconds: the current minute, and the part of the
        one before that is still inside the window."""
        return {k: v[-1] + v[-2] * (1 - self.fraction) for k, v in costs.items()}

    def figures(self, models: list[str], in_force: dict[str, dict[str, float]], chart: str) -> dict[str, Any]:
        """Calls per minute, utilisation, waits, 429s and errors of `models` together
        (`in_force`: each one's limits per minute), and the chart of the last hour (`chart`:
        "utilisation" or "calls"): a point per minute, oldest first, 59 minutes that ended and
        then the last 60 seconds."""
        series = [self.series.get(m) or self.empty for m in models]
        costs = [self.costs(m) for m in models]
        # Per cost, summed over `models`: per minute (the current one last) and now.
        if len(costs) == 1:
            used = costs[0]
        else:
            used = {k: [sum(col) for col in zip(*(c[k] for c in costs), strict=True)] for k in COSTS}
        now = self.per_minute_now(used)
        limited = [in_force.get(m) or {} for m in models]
        # Pooled: what they used of what they may use, in each cost every one of them limits.
        caps = {
            k: sum(lim[k] for lim in limited) for k in COSTS if limited and all(lim.get(k) for lim in limited)
        }
        use_now = round(100 * max(now[k] / cap for k, cap in caps.items()), 1) if caps else None
        if chart == "utilisation" and caps:
            # Minutes that ended (the window's oldest left out), then the last 60 seconds.
            per_cost = [[100 * v / cap for v in used[k][1:HOUR]] for k, cap in caps.items()]
            values: list[float | None] = (
                [round(v, 1) for v in map(max, *per_cost)]
                if len(per_cost) > 1
                else [round(v, 1) for v in per_cost[0]]
            )
            values.append(use_now)
        else:
            chart = "calls"
            values = [*used["requests"][1:HOUR], round(now["requests"], 1)]
        hour = slice(1, None)  # the last 60 minutes, this one included
        waits = [w for s in series for w in s.waits]
        spend_now = sum(s.counts["spend"][-1] + s.counts["spend"][-2] * (1 - self.fraction) for s in series)
        return {
            "calls_per_minute": round(now["requests"], 1),
            # US dollars over the last 60 s, at the deployments' prices (a string: money).
            "spend_per_minute": str(from_micro(round(spend_now))),
            "tokens_per_minute": round(now["tokens"], 1),
            "utilisation_percent": use_now,
            "queue_wait_p50_seconds": _rounded(history.percentile(waits, 0.5)),
            "queue_wait_p99_seconds": _rounded(history.percentile(waits, 0.99)),
            "rate_limited_last_hour": sum(sum(s.rate_limited[hour]) for s in series),
            "errors_last_hour": sum(sum(s.errors[hour]) for s in series),
            "calls_last_hour": sum(sum(s.calls[hour]) for s in series),
            # Calls sent flex or in a provider batch, and what that saved against standard prices.
            "cheap_calls_last_hour": sum(sum(s.counts["cheap"][hour]) for s in series),
            "saved_last_hour": str(from_micro(sum(sum(s.counts["saved"][hour]) for s in series))),
            "chart": {"unit": chart, "values": values},
        }


def _in_use_now(line: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    """`line` with its utilisation made the larger of what it used over the last 60 s and what
    of its capacity is taken now: the buckets' contents (pooled over `parts`, its deployments)
    and its calls at once — all of it while requests wait (a bucket refilled since the last
    grant is the next waiting request's, granted at its wake-up: it reads full for an instant
    but is spoken for). So waiting and utilisation never disagree. `in_use_percent` keeps the
    part taken now."""
    taken = []
    pooled: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for part in parts:
        for name, bucket in (part.get("buckets") or {}).items():
            if bucket.get("capacity"):
                pooled[name][0] += bucket["level"]
                pooled[name][1] += bucket["capacity"]
        concurrency = (part.get("limits") or {}).get("max_concurrency")
        if concurrency:
            taken.append(100 * part.get("in_flight", 0) / concurrency)
    taken += [100 * (1 - level / capacity) for level, capacity in pooled.values()]
    in_use = round(max(0.0, min(100.0, max(taken))), 1) if taken else None
    if line.get("waiting") and in_use is not None:
        in_use = 100.0
    used = line.get("utilisation_percent")
    candidates = [v for v in (used, in_use) if v is not None]
    return {**line, "in_use_percent": in_use, "utilisation_percent": max(candidates) if candidates else None}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _in_force(state: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in (state.get("limits_in_force_per_minute") or {}).items() if k in COSTS}


class _RowCounts:
    """Requests queued and running, by ("group", name) or ("model", provider/model), counted in
    the database at most every ROWS_SECONDS by each process, whatever the number of open pages:
    the count reads every open request's row, about 1 ms per thousand (measured once, with
    100,000 queued rows inserted: 97–133 ms on SQLite and PostgreSQL), where the Redis figures
    cost the same for any backlog. So these two figures may be a few seconds older than the
    rest; the state says how old."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at = -ROWS_SECONDS
        self.counts: dict[tuple[str, str], dict[str, int]] = {}

    def get(self) -> tuple[dict[tuple[str, str], dict[str, int]], float]:
        """The counts, and the monotonic time they were taken."""
        with self.lock:
            if time.monotonic() - self.at >= ROWS_SECONDS:
                self.counts, self.at = self._count(), time.monotonic()
            return self.counts, self.at

    @staticmethod
    def _count() -> dict[tuple[str, str], dict[str, int]]:
        counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: {"queued": 0, "running": 0})
        rows = (
            CompletionRequest.objects.filter(status__in=[CompletionStatus.QUEUED, CompletionStatus.RUNNING])
            .values("group", "provider", "model", "status")
            .annotate(n=Count("id"))
        )
        for row in rows:
            where = (
                ("group", row["group"]) if row["group"] else ("model", f"{row['provider']}/{row['model']}")
            )
            counts[where][row["status"]] += row["n"]
        return dict(counts)


_row_counts = _RowCounts()


def key_label(key_id: int, names: dict[int, str] | None) -> str:
    """A client key as the dashboard and the group admin show it: its name, to those who may see
    names (`names` given), else its number."""
    return names.get(key_id, "?") if names is not None else f"#{key_id}"


def dashboard_state(now: float | None = None, key_names: bool = True) -> dict[str, Any]:
    """Everything the dashboard shows, as of now; client keys by name if `key_names`."""
    now = time.time() if now is None else now
    recent = _Recent(now)
    rows, counted_at = _row_counts.get()
    models = served_models_list()
    groups_served = model_groups_served(models)
    default_queue = str(settings.CELERY_TASK_DEFAULT_QUEUE)
    depths = queue_depths(
        sorted({g.queue_name for g in groups_served} | {m.queue_name for m in models} | {default_queue})
    )
    # Every line's limiter state in one round trip (a group's output reservation: its first
    # deployment's quota's, as group_status has it).
    quotas = {m.pk: quota_get(served_model=m) for m in models}
    for group in groups_served:
        quotas.update({m.pk: quota_get(served_model=m) for m in group.deployments_served})
    key_quotas = [
        kq for kq in KeyQuota.objects.select_related("api_key").filter(api_key__is_active=True) if kq.limited
    ]
    limiter_states = line_statuses(
        [(g.line, quotas[g.deployments_served[0].pk]) for g in groups_served]
        + [(model_line(m), quotas[m.pk]) for m in models]
        + [(key_line(kq.api_key_id), None) for kq in key_quotas]
    )
    states = [
        (
            group,
            group_line_status(
                group=group, deployments=group.deployments_served, st=limiter_states[group.line]
            ),
        )
        for group in groups_served
    ]
    # The flows' client keys by name (only those: there may be thousands of keys).
    flow_ids = {int(f["flow"]) for _, state in states for f in state["flows"] if f["flow"].isdigit()}
    names: dict[int, str] | None = None
    if key_names:
        names = dict(ApiKey.objects.filter(id__in=flow_ids).values_list("id", "name")) if flow_ids else {}

    groups = []
    for group, state in states:
        in_force = {
            str(m): _in_force(dep)
            for m, dep in zip(group.deployments_served, state["deployments"], strict=True)
        }
        # One chart for the group: utilisation where every deployment has a limit, else calls.
        chart = "utilisation" if all(in_force.values()) else "calls"
        deployments = [
            _in_use_now({"name": name, **dep, **recent.figures([name], in_force, chart)}, [dep])
            for name, dep in zip(in_force, state["deployments"], strict=True)
        ]
        for flow in state["flows"]:
            flow["name"] = key_label(int(flow["flow"]), names) if flow["flow"].isdigit() else flow["flow"]
            flow.pop("yours", None)
        groups.append(
            _in_use_now(
                {
                    **state,
                    "name": group.name,
                    "rows": rows.get(("group", group.name), {"queued": 0, "running": 0}),
                    "broker_messages": depths.get(group.queue_name, 0),
                    **recent.figures(list(in_force), in_force, chart),
                    "deployments": deployments,
                },
                state["deployments"],
            )
        )

    lines = []
    for served in models:
        if served.group is not None:
            continue  # served through its group's line only: it is shown there, once
        name = model_line(served)
        state = served_line_status(served_model=served, quota=quotas[served.pk], st=limiter_states[name])
        line = {
            **state,
            "name": name,
            "group": None,
            "rows": rows.get(("model", name), {"queued": 0, "running": 0}),
            "broker_messages": depths.get(served.queue_name, 0),
            **recent.figures([name], {name: _in_force(state)}, "utilisation"),
        }
        lines.append(_in_use_now(line, [state]))
    return {
        "now": timezone.now().isoformat(),
        "rows_counted_seconds_ago": round(time.monotonic() - counted_at, 1),
        "workers": len(live_workers()),
        # Housekeeping tasks and key lines' wake-ups.
        "default_queue_messages": depths[default_queue],
        "groups": groups,
        "models": lines,
        "keys": _key_lines(key_quotas, limiter_states, key_names),
        "budgets": _budgets(key_names),
    }


def _budgets(key_names: bool) -> list[dict[str, Any]]:
    """Every budget's current period; `warning`: spent past its soft threshold, `spent_out`:
    nothing is left for a request (the hard stop)."""
    out = []
    budgets = list(Budget.objects.select_related("api_key", "group"))
    for budget, state in zip(budgets, budget_states(budgets), strict=True):
        if budget.api_key is not None:
            name = budget.api_key.name if key_names else key_label(budget.api_key.pk, None)
            owner = f"key {name}"
        else:
            owner = f"group {budget.group}"
        out.append(
            {
                **state,
                "owner": owner,
                "warning": state["over_warning"],
                "spent_out": Decimal(state["left"]) <= 0,
            }
        )
    return out


def _key_lines(
    key_quotas: list[KeyQuota], states: dict[str, LineStatus], key_names: bool
) -> list[dict[str, Any]]:
    """Client keys with a rate limit of their own: a request over it waits in the key's line
    before it reaches its model's (queued as a row, not yet waiting in the model's line)."""
    queued = dict(
        CompletionRequest.objects.filter(
            status=CompletionStatus.QUEUED, api_key_id__in=[kq.api_key_id for kq in key_quotas]
        )
        .values("api_key_id")
        .annotate(n=Count("id"))
        .values_list("api_key_id", "n")
    )
    return [
        {
            "name": kq.api_key.name if key_names else key_label(kq.api_key_id, None),
            "queued": queued.get(kq.api_key_id, 0),
            **key_line_status(key_quota=kq, st=states[key_line(kq.api_key_id)]),
        }
        for kq in key_quotas
    ]


def may_read_dashboard(user: Any) -> bool:
    return bool(user.is_active and user.is_staff and user.has_perm(DASHBOARD_PERMISSION))


@staff_member_required
@never_cache
@require_safe
def dashboard_page(request: HttpRequest) -> HttpResponse:
    """The page; its script fetches the state."""
    if not may_read_dashboard(request.user):
        raise PermissionDenied
    context = {
        **admin.site.each_context(request),
        "title": "Live dashboard",
        "poll_ms": int(POLL_SECONDS * 1000),
        "poll_seconds": POLL_SECONDS,
    }
    return render(request, "completions/dashboard.html", context)


@never_cache
@require_safe
@gzip_page  # a large registry's state is a few hundred KiB of JSON every 1.5 s; it holds no secret
def dashboard_state_view(request: HttpRequest) -> HttpResponse:
    """The state as JSON, for staff signed in to the admin (session cookie) who may view served
    models; key names for those who may also view API keys."""
    user = request.user
    if not may_read_dashboard(user):
        return JsonResponse(
            {
                "error": {
                    "message": "Sign in to the admin as staff allowed to view served models to read the dashboard.",
                    "type": "forbidden",
                }
            },
            status=403,
        )
    try:
        return JsonResponse(dashboard_state(key_names=user.has_perm(KEY_NAMES_PERMISSION)))
    except RedisError:
        # Lines, buckets and the history live in Redis: say so, and the page retries.
        return JsonResponse(
            {
                "error": {
                    "message": "Redis is unreachable: the lines cannot be read now.",
                    "type": "unavailable",
                }
            },
            status=503,
        )
