"""Admin: the model registry (editable), API keys (created here, shown once), and the request
history (read-only)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.utils import timezone

from completions.models import ApiKey, CompletionRequest, Provider, ServedModel, endpoint_changes
from completions.services import api_key_create
from ratelimit.admin import KeyQuotaInline


class ServedModelInline(admin.TabularInline):
    model = ServedModel
    extra = 0
    fields = ["name", "enabled", "options"]


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    """Where a worker sends which secret (base URL, key variable) is editable only with the
    `change_provider_endpoint` permission (superusers have it), and every change of it is in the
    admin log with its old and new values."""

    list_display = ["name", "kind", "base_url", "api_key_env", "timeout_seconds", "served"]
    list_filter = ["kind"]
    search_fields = ["name"]
    inlines = [ServedModelInline]

    def get_readonly_fields(self, request: HttpRequest, obj: Provider | None = None) -> list[str]:
        readonly = list(super().get_readonly_fields(request, obj))
        if not request.user.has_perm("completions.change_provider_endpoint"):
            readonly += Provider.ENDPOINT_FIELDS
        return readonly

    def save_model(self, request: HttpRequest, obj: Provider, form: Any, change: bool) -> None:
        before = (
            Provider.objects.filter(pk=obj.pk).values(*Provider.ENDPOINT_FIELDS).first() if change else None
        )
        super().save_model(request, obj, form, change)
        moved = endpoint_changes(before, obj)
        if moved:
            self.log_change(request, obj, moved)

    @admin.display(description="Models")
    def served(self, obj: Provider) -> int:
        return obj.models.count()


@admin.register(ServedModel)
class ServedModelAdmin(admin.ModelAdmin):
    list_display = ["__str__", "provider", "name", "enabled", "queue"]
    list_filter = ["enabled", "provider"]
    search_fields = ["name"]
    list_select_related = ["provider"]

    @admin.display(description="Celery queue")
    def queue(self, obj: ServedModel) -> str:
        return obj.queue_name


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "prefix",
        "is_active",
        "requests_24h",
        "tokens_24h",
        "quota_summary",
        "created_at",
    ]
    list_filter = ["is_active"]
    search_fields = ["name", "prefix"]
    fields = ["name", "is_active", "prefix", "user", "created_at"]
    readonly_fields = ["prefix", "user", "created_at"]
    inlines = [KeyQuotaInline]
    list_select_related = ["quota"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiKey]:
        # Usage over the last 24 hours, one aggregate query for the whole page.
        since = timezone.now() - timedelta(hours=24)
        recent = Q(requests__created_at__gte=since)
        return (
            super()
            .get_queryset(request)
            .annotate(
                n_recent=Count("requests", filter=recent),
                tokens_recent=Sum(
                    Coalesce("requests__input_tokens", 0) + Coalesce("requests__output_tokens", 0),
                    filter=recent,
                ),
            )
        )

    @admin.display(description="Requests (24 h)", ordering="n_recent")
    def requests_24h(self, obj: ApiKey) -> int:
        return getattr(obj, "n_recent", 0)

    @admin.display(description="Tokens (24 h)", ordering="tokens_recent")
    def tokens_24h(self, obj: ApiKey) -> int:
        return getattr(obj, "tokens_recent", None) or 0

    @admin.display(description="Quota")
    def quota_summary(self, obj: ApiKey) -> str:
        quota = getattr(obj, "quota", None)
        if quota is None or not quota.limited:
            return "–"
        parts = [
            f"{quota.requests_per_minute} req/min" if quota.requests_per_minute else "",
            f"{quota.tokens_per_minute} tok/min" if quota.tokens_per_minute else "",
        ]
        return ", ".join(p for p in parts if p) + (" (fail fast)" if quota.fail_fast else "")

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        key, raw = api_key_create(name=obj.name)
        key.is_active = obj.is_active
        key.save(update_fields=["is_active"])
        obj.pk = key.pk
        obj.refresh_from_db()
        messages.warning(
            request,
            f"API key for {key.name}: {raw} — copy it now; it is stored hashed and cannot be shown again.",
        )


@admin.register(CompletionRequest)
class CompletionRequestAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "status",
        "provider",
        "model",
        "api_key",
        "upstream_status",
        "attempts",
        "created_at",
        "queue_wait",
        "upstream_time",
    ]
    list_filter = ["status", "provider", "model", "api_key"]
    search_fields = ["id"]
    date_hierarchy = "created_at"
    list_select_related = ["api_key"]
    show_full_result_count = False

    def get_readonly_fields(self, request: HttpRequest, obj: CompletionRequest | None = None) -> list[str]:
        return [f.name for f in CompletionRequest._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[CompletionRequest], search_term: str
    ) -> tuple[QuerySet[CompletionRequest], bool]:
        # Search by exact id: a LIKE over UUIDs is neither useful nor cheap.
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(id=uuid.UUID(term)), False
        except ValueError:
            return queryset.none(), False

    @admin.display(description="Queue wait (s)")
    def queue_wait(self, obj: CompletionRequest) -> str:
        return f"{obj.queue_seconds:.3f}" if obj.queue_seconds is not None else "–"

    @admin.display(description="Upstream (s)")
    def upstream_time(self, obj: CompletionRequest) -> str:
        return f"{obj.upstream_seconds:.3f}" if obj.upstream_seconds is not None else "–"
