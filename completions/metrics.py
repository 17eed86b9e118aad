"""Prometheus metrics for the whole deployment, from any web process.

Workers add to counters and histogram bins in one Redis hash (one pipelined round trip per
attempt); `/metrics` reads that hash and adds gauges computed at scrape time: requests waiting
and running per model (database), in-flight calls and bucket levels per limited model (Redis).
So every web process reports the same numbers, however many workers there are.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from balancer_project.redis_conn import get_redis
from completions import history
from completions.spend import MICRO, to_micro

KEY = "balancer:metrics"
SEP = "\t"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
HISTOGRAMS = {
    "queue_wait": "Seconds a request waited in line before its first attempt started.",
    "upstream": "Seconds one upstream call took.",
}


def record_attempt(
    *,
    model: str,
    status: int | None,
    upstream_seconds: float,
    queue_seconds: float | None,
    input_tokens: int | None,
    output_tokens: int | None,
    retried: bool,
    pipe: Any = None,
    cost: Decimal | None = None,
    tier: str = "standard",
    saved: Decimal | None = None,
) -> None:
    """Count one upstream attempt (called by workers). Never raises: metrics must not fail work.
    With `pipe` the commands join the caller's pipeline (executed with raise_on_error=False)."""
    try:
        own = pipe is None
        if own:
            pipe = get_redis().pipeline(transaction=False)
        pipe.hincrby(KEY, SEP.join(("status", model, str(status or "none"))), 1)
        if input_tokens:
            pipe.hincrby(KEY, SEP.join(("tokens", model, "input")), input_tokens)
        if output_tokens:
            pipe.hincrby(KEY, SEP.join(("tokens", model, "output")), output_tokens)
        if retried:
            pipe.hincrby(KEY, SEP.join(("retries", model)), 1)
        spend_micro = to_micro(cost) if cost else 0
        if spend_micro:
            pipe.hincrby(KEY, SEP.join(("spend", model)), spend_micro)
        if tier != "standard":  # the rest are standard: no command for them on every call
            pipe.hincrby(KEY, SEP.join(("tier", model, tier)), 1)
        saved_micro = to_micro(saved) if saved else 0
        if saved_micro:
            pipe.hincrby(KEY, SEP.join(("saved", model, tier)), saved_micro)
        history.record(
            pipe,
            model=model,
            status=status,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            queue_seconds=queue_seconds,
            spend_micro=spend_micro,
            cheap=tier != "standard",
            saved_micro=saved_micro,
        )
        _observe(pipe, "upstream", model, upstream_seconds)
        if queue_seconds is not None:
            _observe(pipe, "queue_wait", model, queue_seconds)
        if own:
            pipe.execute()
    except Exception:  # noqa: BLE001
        pass


def _observe(pipe: Any, name: str, model: str, value: float) -> None:
    """One count in the value's own bin (the smallest bound it fits); the collector adds the bins
    up into Prometheus's cumulative buckets, so an observation costs two commands, not eighteen."""
    le = next((str(b) for b in BUCKETS if value <= b), "+Inf")
    pipe.hincrby(KEY, SEP.join(("bin", name, model, le)), 1)
    pipe.hincrbyfloat(KEY, SEP.join(("sum", name, model)), value)


def _periodic() -> Iterator[Any]:
    """How often each periodic task ran (once per period for the cluster: completions.periodic),
    and when it last did: a beat that stopped shows here."""
    from completions.periodic import LAST_KEY, RUNS_KEY

    r = get_redis()
    runs = CounterMetricFamily(
        "balancer_periodic_runs", "Runs of each periodic task, cluster-wide.", labels=["task"]
    )
    last = GaugeMetricFamily(
        "balancer_periodic_last_run_timestamp_seconds",
        "When each periodic task last ran (Unix time).",
        labels=["task"],
    )
    for task, value in sorted(r.hgetall(RUNS_KEY).items()):
        runs.add_metric([str(task)], float(value))
    for task, value in sorted(r.hgetall(LAST_KEY).items()):
        last.add_metric([str(task)], float(value))
    yield runs
    yield last


class BalancerCollector:
    def collect(self) -> Iterator[Any]:
        from completions.models import Budget, CompletionRequest, CompletionStatus, ServedModel
        from completions.selectors import model_groups_served
        from completions.spend import budget_scope, budget_states
        from ratelimit import limiter
        from ratelimit.lines import line_name
        from ratelimit.models import Quota

        raw: dict[str, str] = get_redis().hgetall(KEY)  # type: ignore[assignment]  # decoded replies
        status = CounterMetricFamily(
            "balancer_upstream_responses",
            "Upstream attempts by HTTP status ('none': no answer).",
            labels=["model", "status"],
        )
        tokens = CounterMetricFamily(
            "balancer_tokens", "Tokens used, from the providers' usage.", labels=["model", "kind"]
        )
        retries = CounterMetricFamily(
            "balancer_retries", "Attempts retried after a transient upstream error.", labels=["model"]
        )
        spend = CounterMetricFamily(
            "balancer_spend_usd",
            "US dollars spent, at each deployment's prices, from the providers' usage.",
            labels=["model"],
        )
        tiers = CounterMetricFamily(
            "balancer_tier_calls",
            "Upstream calls sent in a cheaper tier (flex, batch); every other call is standard.",
            labels=["model", "tier"],
        )
        saved = CounterMetricFamily(
            "balancer_saved_usd",
            "US dollars saved by cheaper tiers: what their calls would have cost at standard prices, "
            "less what they cost.",
            labels=["model", "tier"],
        )
        buckets: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        sums: dict[tuple[str, str], float] = {}
        for field, value in raw.items():
            parts = field.split(SEP)
            if parts[0] == "status":
                status.add_metric([parts[1], parts[2]], float(value))
            elif parts[0] == "tokens":
                tokens.add_metric([parts[1], parts[2]], float(value))
            elif parts[0] == "retries":
                retries.add_metric([parts[1]], float(value))
            elif parts[0] == "spend":
                spend.add_metric([parts[1]], float(int(value) * MICRO))
            elif parts[0] == "tier":
                tiers.add_metric([parts[1], parts[2]], float(value))
            elif parts[0] == "saved":
                saved.add_metric([parts[1], parts[2]], float(int(value) * MICRO))
            elif parts[0] == "bin":
                buckets[(parts[1], parts[2])][parts[3]] = float(value)
            elif parts[0] == "sum":
                sums[(parts[1], parts[2])] = float(value)
        yield from (status, tokens, retries, spend, tiers, saved)
        yield from _periodic()
        for name, help_text in HISTOGRAMS.items():
            family = HistogramMetricFamily(f"balancer_{name}_seconds", help_text, labels=["model"])
            for (hist, model), counts in sorted(buckets.items()):
                if hist != name:
                    continue
                points, below = [], 0.0
                for le in [*map(str, BUCKETS), "+Inf"]:
                    below += counts.get(le, 0.0)
                    points.append((le, below))
                family.add_metric([model], points, sum_value=sums.get((name, model), 0.0))
            yield family

        remaining = GaugeMetricFamily(
            "balancer_budget_remaining_usd",
            "US dollars left in a budget's current period (its limit less what was spent and what "
            "requests not ended reserved).",
            labels=["budget", "period"],
        )
        budgets = list(Budget.objects.select_related("group"))
        for budget, state in zip(budgets, budget_states(budgets), strict=True):
            remaining.add_metric([budget_scope(budget), budget.period_label], float(state["left"]))
        yield remaining

        depth = GaugeMetricFamily(
            "balancer_requests", "Requests waiting or running now.", labels=["model", "status"]
        )
        rows = (
            CompletionRequest.objects.filter(status__in=[CompletionStatus.QUEUED, CompletionStatus.RUNNING])
            .values("provider", "model", "status")
            .annotate(n=Count("id"))
        )
        for row in rows:
            depth.add_metric([line_name(row["provider"], row["model"]), row["status"]], row["n"])
        yield depth
        in_flight = GaugeMetricFamily(
            "balancer_in_flight", "Calls holding a concurrency slot.", labels=["model"]
        )
        levels = GaugeMetricFamily(
            "balancer_bucket_level", "Token-bucket level now.", labels=["model", "bucket"]
        )
        capacity = GaugeMetricFamily(
            "balancer_bucket_capacity",
            "Token-bucket size (margins applied): 1 - level / capacity is how much of it is in use.",
            labels=["model", "bucket"],
        )
        in_force = GaugeMetricFamily(
            "balancer_limit_per_minute",
            "A bucket's rate in force now (the quota, or a lower one the provider reported).",
            labels=["model", "bucket"],
        )
        waiting = GaugeMetricFamily("balancer_line_waiting", "Requests in a model's line.", labels=["model"])
        quotas = {q.served_model_id: q for q in Quota.objects.all()}

        def bucket_state(
            model: str,
            quota: Quota | None,
            st_levels: dict[str, float | None],
            st_in_force: dict[str, float | None],
        ) -> None:
            """A line's (or a deployment's) buckets: levels, sizes, rates in force."""
            for bucket, level in st_levels.items():
                if level is not None:
                    levels.add_metric([model, bucket], level)
            for bucket, size in (quota.capacities() if quota is not None else {}).items():
                capacity.add_metric([model, bucket], size)
            for bucket, rate in st_in_force.items():
                if rate is not None:
                    in_force.add_metric([model, bucket], rate)

        # A group's deployment is served through its group's line only: its by-name line is idle.
        alone = ServedModel.objects.select_related("provider").filter(id__in=list(quotas), group__isnull=True)
        for served in alone:
            line = line_name(served.provider.name, served.name)
            st = limiter.status(line, input_tokens=0, output_tokens=0)
            in_flight.add_metric([line], st.in_flight)
            waiting.add_metric([line], st.waiting)
            bucket_state(line, quotas[served.pk], st.levels, st.limits_in_force)
        # A model group's line: its waiting requests under the group's name; slots, levels and
        # cooldowns per deployment (provider/model).
        cooling = GaugeMetricFamily(
            "balancer_deployment_cooling_seconds",
            "Seconds a group's deployment still cools down after failures (0: available).",
            labels=["group", "model"],
        )
        flow_waiting = GaugeMetricFamily(
            "balancer_flow_waiting",
            "Requests of a client key waiting in a group's line.",
            labels=["group", "flow"],
        )
        flow_share = GaugeMetricFamily(
            "balancer_flow_share",
            "A client key's share of the tokens granted in a group's line over the last minute.",
            labels=["group", "flow"],
        )
        flow_wait = GaugeMetricFamily(
            "balancer_flow_queue_wait_p50_seconds",
            "Median wait in a group's line of a client key's requests granted in the last minute.",
            labels=["group", "flow"],
        )
        for group in model_groups_served():
            st = limiter.status(group.line, input_tokens=0, output_tokens=0)
            waiting.add_metric([group.name], st.waiting)
            for flow in st.flows:
                flow_waiting.add_metric([group.name, flow.flow], flow.waiting)
                flow_share.add_metric([group.name, flow.flow], flow.share)
                flow_wait.add_metric([group.name, flow.flow], flow.wait_p50)
            by_id = {str(m.pk): str(m) for m in group.deployments_served}
            for dep in st.deployments:
                deployment = by_id.get(dep.id)
                if deployment is None:
                    continue
                in_flight.add_metric([deployment], dep.in_flight)
                cooling.add_metric([group.name, deployment], dep.cooling_seconds)
                bucket_state(deployment, quotas.get(int(dep.id)), dep.levels, dep.limits_in_force)
        yield from (
            in_flight,
            levels,
            capacity,
            in_force,
            waiting,
            cooling,
            flow_waiting,
            flow_share,
            flow_wait,
        )


@csrf_exempt
@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET /metrics. With BALANCER_METRICS_TOKEN set, scrapers must send it as a Bearer token."""
    token = settings.BALANCER_METRICS_TOKEN
    if token and request.headers.get("Authorization") != f"Bearer {token}":
        return HttpResponse("metrics token required\n", status=401, content_type="text/plain")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BalancerCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
