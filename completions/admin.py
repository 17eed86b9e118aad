"""Admin: the model registry (editable), API keys (created here, shown once), and the request
history (read-only)."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from completions.models import ApiKey, CompletionRequest, Provider, ServedModel
from completions.services import api_key_create


class ServedModelInline(admin.TabularInline):
    model = ServedModel
    extra = 0
    fields = ["name", "enabled", "options"]


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "base_url", "api_key_env", "timeout_seconds", "served"]
    list_filter = ["kind"]
    search_fields = ["name"]
    inlines = [ServedModelInline]

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
    list_display = ["name", "prefix", "is_active", "user", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["name", "prefix"]
    fields = ["name", "is_active", "prefix", "user", "created_at"]
    readonly_fields = ["prefix", "user", "created_at"]

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
