"""Quotas in the admin, with the live state of each model's line beside them."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from ratelimit.lines import group_line, line_name
from ratelimit.models import KeyQuota, Quota
from ratelimit.selectors import group_status, line_status


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    # The limits in one column, so that the list (with the live state) fits a 1,400 px screen.
    list_display = [
        "served_model",
        "limits",
        "waiting",
        "in_flight",
        "levels",
        "estimated_wait",
    ]
    list_select_related = ["served_model__provider", "served_model__group"]
    search_fields = ["served_model__name", "served_model__provider__name"]
    readonly_fields = ["line_state"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Quota]:
        self._status: dict[int, dict[str, Any]] = {}
        return super().get_queryset(request)

    def _line(self, obj: Quota) -> dict[str, Any]:
        """The state of the line its model is served through: its own, or — for a deployment of
        a group — its part of the group's line (its by-name line serves nothing)."""
        cache = getattr(self, "_status", {})
        if obj.pk not in cache:
            served = obj.served_model
            group = served.group
            try:
                if group is not None:
                    line, deployments = group_status(
                        line=group_line(group.name), quotas={str(served.pk): obj}
                    )
                    cache[obj.pk] = {
                        **line,
                        **deployments.get(str(served.pk), {}),
                        "waiting": f"{line['waiting']} (group {group.name})",
                    }
                else:
                    cache[obj.pk] = line_status(line=line_name(served.provider.name, served.name), quota=obj)
            except Exception:  # Redis unreachable: show the quota anyway.
                cache[obj.pk] = {}
        return cache[obj.pk]

    @admin.display(description="Limits")
    def limits(self, obj: Quota) -> str:
        parts = [
            f"{value:g} {unit}"
            for value, unit in (
                (obj.requests_per_minute, "rpm"),
                (obj.tokens_per_minute, "tpm"),
                (obj.input_tokens_per_minute, "itpm"),
                (obj.output_tokens_per_minute, "otpm"),
                (obj.max_concurrency, "at once"),
            )
            if value
        ]
        return f"{', '.join(parts) or 'none'}; burst {obj.burst_seconds:g} s"

    @admin.display(description="Waiting")
    def waiting(self, obj: Quota) -> Any:
        return self._line(obj).get("waiting", "?")

    @admin.display(description="In flight")
    def in_flight(self, obj: Quota) -> Any:
        return self._line(obj).get("in_flight", "?")

    @admin.display(description="Bucket levels")
    def levels(self, obj: Quota) -> str:
        buckets = self._line(obj).get("buckets", {})
        return ", ".join(f"{k} {v['level']:g}/{v['capacity']:g}" for k, v in buckets.items()) or "–"

    @admin.display(description="Est. wait (s)")
    def estimated_wait(self, obj: Quota) -> Any:
        return self._line(obj).get("estimated_wait_seconds", "?")

    @admin.display(description="Line now")
    def line_state(self, obj: Quota) -> str:
        if obj.pk is None:
            return "–"
        s = self._line(obj)
        if not s:
            return "Redis unreachable"
        return (
            f"{s['waiting']} waiting, {s['in_flight']} in flight; buckets: {self.levels(obj)}; "
            f"a new request would wait about {s['estimated_wait_seconds']} s"
        )


class KeyQuotaForm(forms.ModelForm):
    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        # Choosing models means "only these"; the box alone (no models) means "none".
        if cleaned.get("allowed_models"):
            cleaned["restrict_models"] = True
        return cleaned


class KeyQuotaInline(admin.StackedInline):
    """Edited on the API key's page."""

    model = KeyQuota
    form = KeyQuotaForm
    extra = 0
    max_num = 1
    filter_horizontal = ["allowed_models"]
    fields = [
        "requests_per_minute",
        "tokens_per_minute",
        "burst_seconds",
        "fail_fast",
        "max_queued",
        "max_waiting",
        "restrict_models",
        "allowed_models",
    ]
