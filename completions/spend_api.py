"""GET /api/v1/spend: what the calling key has spent — its budget's period, and the last days by
day, by model and by group — in US dollars as strings (money is Decimal, never float)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from completions.authentication import api_key_of
from completions.models import TERMINAL_STATUSES, ApiKey, CompletionRequest
from completions.spend import ZERO, budget_states, group_budget, key_budget

MAX_DAYS = 90


class SpendQuerySerializer(serializers.Serializer[Any]):
    days = serializers.IntegerField(
        min_value=1, max_value=MAX_DAYS, default=30, help_text="How many days back (today included)."
    )


def key_spend(*, api_key: ApiKey, days: int) -> dict[str, Any]:
    """What `api_key` spent in the last `days` days (UTC), and its budgets' periods."""
    since = (timezone.now() - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    ended = CompletionRequest.objects.filter(
        api_key=api_key, created_at__gte=since, status__in=TERMINAL_STATUSES, cost__isnull=False
    )

    def rows(*by: Any) -> list[dict[str, Any]]:
        return list(ended.values(*by).annotate(spent=Sum("cost"), requests=Count("id")).order_by(*by))

    def money(value: Decimal | None) -> str:
        return str((value or ZERO).quantize(Decimal("0.000001")))

    by_day = [
        {"date": r["day"].isoformat(), "spent": money(r["spent"]), "requests": r["requests"]}
        for r in ended.annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(spent=Sum("cost"), requests=Count("id"))
        .order_by("day")
    ]
    by_model = [
        {"model": f"{r['provider']}/{r['model']}", "spent": money(r["spent"]), "requests": r["requests"]}
        for r in rows("provider", "model")
    ]
    by_group = [
        {"group": r["group"], "spent": money(r["spent"]), "requests": r["requests"]}
        for r in rows("group")
        if r["group"]
    ]
    own = [b for b in [key_budget(api_key)] if b is not None]
    of_groups = [b for g in by_group if (b := group_budget(g["group"])) is not None]
    states = budget_states(own + of_groups)
    return {
        "currency": "USD",
        "since": since,
        "total": money(ended.aggregate(total=Sum("cost"))["total"]),
        "budget": states[0] if own else None,
        "group_budgets": states[len(own) :],
        "by_day": by_day,
        "by_model": by_model,
        "by_group": by_group,
    }


class SpendApi(APIView):
    """What your key has spent (US dollars, at each deployment's prices): its budget's current
    period, and the last `days` days by day, by model and by model group."""

    @extend_schema(
        parameters=[SpendQuerySerializer, OpenApiParameter("days", OpenApiTypes.INT, required=False)],
        responses={200: OpenApiTypes.OBJECT},
        examples=[
            OpenApiExample(
                "A key with a daily budget",
                response_only=True,
                value={
                    "currency": "USD",
                    "since": "2026-11-04T00:00:00Z",
                    "total": "12.408200",
                    "budget": {
                        "owner": "key 12",
                        "period": "daily",
                        "start": "2026-12-03T00:00:00Z",
                        "reset": "2026-12-04T00:00:00Z",
                        "limit": "20.00",
                        "spent": "3.204100",
                        "reserved": "0.120000",
                        "left": "16.675900",
                        "warn_at": "15.00",
                        "over_warning": False,
                    },
                    "group_budgets": [],
                    "by_day": [{"date": "2026-12-03", "spent": "3.204100", "requests": 1412}],
                    "by_model": [{"model": "openai/gpt-4o", "spent": "12.408200", "requests": 5130}],
                    "by_group": [{"group": "gpt-4o", "spent": "12.408200", "requests": 5130}],
                },
            )
        ],
    )
    def get(self, request: Request) -> Response:
        query = SpendQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(key_spend(api_key=api_key_of(request), days=query.validated_data["days"]))
