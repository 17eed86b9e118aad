"""Admin: the model registry (editable), API keys (created here, shown once), and the request
history (read-only)."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import connection
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from redis.exceptions import RedisError

from completions.dashboard import KEY_NAMES_PERMISSION, key_label
from completions.models import (
    ApiKey,
    Budget,
    ClientBatch,
    CompletionRequest,
    CompletionStatus,
    DeploymentPrice,
    ModelGroup,
    Provider,
    ProviderBatch,
    ProviderKind,
    ServedModel,
    provider_save,
)
from completions.queues import group_line_status
from completions.selectors import group_deployments, served_model_waiting
from completions.services import (
    api_key_create,
    api_key_deactivate,
    completion_request_cancel,
    served_model_waiting_cancel,
)
from completions.spend import current_period, period_spend
from completions.workers import credentialed_providers
from ratelimit.admin import KeyQuotaInline

admin.site.site_header = "LLM Request Balancer"
admin.site.site_title = "LLM Request Balancer"
# The index leads to the live dashboard (completions/dashboard.py).
admin.site.index_template = "admin/balancer_index.html"
# The lists take the whole width (they fit a 1,400 px screen; tests/test_browser.py); the index
# and the breadcrumbs lead everywhere the sidebar did.
admin.site.enable_nav_sidebar = False


class ServedModelInline(admin.TabularInline):
    model = ServedModel
    extra = 0
    fields = ["name", "enabled", "group", "weight", "options"]


class DeploymentInline(admin.TabularInline):
    model = ServedModel
    fk_name = "group"
    extra = 0
    fields = ["provider", "name", "enabled", "weight"]
    verbose_name = "deployment"
    verbose_name_plural = "deployments (served models of any provider; each keeps its own quota)"


class PriceInline(admin.TabularInline):
    """A deployment's prices, per tier (none: it costs nothing)."""

    model = DeploymentPrice
    extra = 0
    fields = [
        "tier",
        "input",
        "cached_input",
        "output",
        "enqueued_tokens",
        "turnaround_seconds",
        "updated_at",
    ]
    readonly_fields = ["updated_at"]
    verbose_name_plural = "Prices (US dollars per million tokens; none: it costs nothing)"


class BudgetInline(admin.StackedInline):
    """A key's or a group's budget, with where its current period stands (completions.spend)."""

    model = Budget
    extra = 0
    max_num = 1
    fields = ["limit", "period", "hours", "warn_at", "when_spent", "this_period"]
    readonly_fields = ["this_period"]

    @admin.display(description="This period")
    def this_period(self, obj: Budget) -> str:
        if obj.pk is None:
            return "–"
        period = current_period(obj)
        when = f"{period.start:%Y-%m-%d %H:%M} to {period.reset:%Y-%m-%d %H:%M} UTC"
        try:
            spent, reserved = period_spend(period)
        except RedisError:
            return f"{when} (Redis unreachable)"
        left = max(obj.limit - spent - reserved, 0)
        return f"{when}: spent ${spent}, reserved ${reserved} by requests not ended, left ${left}"


class ReadOnlyAdmin(admin.ModelAdmin):
    """A record the admin shows and never edits: every field read-only, nothing added, changed or
    deleted here (actions may still act on it through the services)."""

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [str(name) for name in self.fields or []]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class SaysWhatDeletingDoes(admin.ModelAdmin):
    """Before a deletion is confirmed, says what it does to the requests waiting for the object
    (`deletion_warning`: None when none wait)."""

    def deletion_warning(self, obj: Any) -> str | None:
        return None

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> Any:
        obj = self.get_object(request, object_id)
        if obj is not None and request.method == "GET":
            warning = self.deletion_warning(obj)
            if warning:
                messages.warning(request, warning)
        return super().delete_view(request, object_id, extra_context)


@admin.register(ModelGroup)
class ModelGroupAdmin(SaysWhatDeletingDoes):
    """A public model name and its deployments; the state of its line (cooldowns included)."""

    list_display = ["name", "policy", "scheduling", "fallback", "deployment_count", "cooling"]
    list_filter = ["policy"]
    search_fields = ["name"]
    inlines = [DeploymentInline, BudgetInline]

    def get_readonly_fields(self, request: HttpRequest, obj: ModelGroup | None = None) -> list[str]:
        # The line's client keys by name only to those who may view API keys.
        named = request.user.has_perm(KEY_NAMES_PERMISSION)
        return [*super().get_readonly_fields(request, obj), "line_state" if named else "line_state_by_number"]

    def deletion_warning(self, obj: ModelGroup) -> str | None:
        waiting = CompletionRequest.objects.filter(status=CompletionStatus.QUEUED, group=obj.name).count()
        if not waiting:
            return None
        return (
            f"{waiting} queued request(s) wait for {obj.name}. Deleted, the group takes no new "
            "requests; those are still served by its deployments as they are now (its line drains)."
        )

    @admin.display(description="Deployments")
    def deployment_count(self, obj: ModelGroup) -> int:
        return obj.deployments.filter(enabled=True).count()

    def _state(self, obj: ModelGroup) -> dict[str, Any] | None:
        try:
            return group_line_status(group=obj, deployments=group_deployments(obj))
        except RedisError:
            return None

    @admin.display(description="Cooling down")
    def cooling(self, obj: ModelGroup) -> str:
        state = self._state(obj)
        if state is None:
            return "? (Redis unreachable)"
        cool = [
            f"{d['provider']}/{d['model']} {d['cooldown']['seconds_left']:.0f} s ({d['cooldown']['last_fault']})"
            for d in state["deployments"]
            if d.get("cooldown", {}).get("seconds_left")
        ]
        return ", ".join(cool) or "–"

    @admin.display(description="Line now")
    def line_state(self, obj: ModelGroup) -> str:
        return self._line_rows(obj, key_names=True)

    @admin.display(description="Line now")
    def line_state_by_number(self, obj: ModelGroup) -> str:
        return self._line_rows(obj, key_names=False)

    def _line_rows(self, obj: ModelGroup, key_names: bool) -> str:
        if obj.pk is None:
            return "–"
        state = self._state(obj)
        if state is None:
            return "Redis unreachable"
        rows = [f"waiting {state['waiting']}, in flight {state['in_flight']}"]
        for d in state["deployments"]:
            cooldown = d.get("cooldown") or {}
            left = cooldown.get("seconds_left") or 0
            rows.append(
                f"{d['provider']}/{d['model']} (weight {d['weight']}): in flight {d.get('in_flight', 0)}, "
                f"granted {d.get('granted', 0)}, "
                + (f"cooling down {left:.1f} s after {cooldown.get('last_fault')}" if left else "available")
            )
        names = (
            dict(
                ApiKey.objects.filter(
                    pk__in=[f["flow"] for f in state["flows"] if f["flow"].isdigit()]
                ).values_list("pk", "name")
            )
            if key_names
            else None
        )
        for f in state["flows"]:
            label = key_label(int(f["flow"]), names) if f["flow"].isdigit() else f["flow"]
            rows.append(
                f"key {label}: waiting {f['waiting']}, {100 * f['share_last_minute']:.1f} % of the "
                f"tokens granted in the last minute ({f['granted_last_minute']} requests), queue wait p50 "
                f"{f['queue_wait_p50_seconds']:.3f} s, max {f['queue_wait_max_seconds']:.3f} s"
            )
        return format_html_join(mark_safe("<br>"), "{}", ((r,) for r in rows))


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    """Where a worker sends which secret (base URL, key variable) is editable only with the
    `change_provider_endpoint` permission (superusers have it), and every change of it is in the
    admin log with its old and new values."""

    list_display = ["name", "kind", "base_url", "api_key_env", "key_set", "timeout_seconds", "served"]
    list_filter = ["kind"]
    search_fields = ["name"]
    inlines = [ServedModelInline]

    def get_readonly_fields(self, request: HttpRequest, obj: Provider | None = None) -> list[str]:
        readonly = list(super().get_readonly_fields(request, obj))
        if not request.user.has_perm("completions.change_provider_endpoint"):
            readonly += Provider.ENDPOINT_FIELDS
        return readonly

    def save_model(self, request: HttpRequest, obj: Provider, form: Any, change: bool) -> None:
        moved = provider_save(obj)
        if moved:
            self.log_change(request, obj, moved)

    @admin.display(description="Models")
    def served(self, obj: Provider) -> int:
        return obj.models.count()

    @admin.display(description="Key set?")
    def key_set(self, obj: Provider) -> str:
        """Whether its key variable is set where the calls are made (a live worker reports the
        providers whose key it can read: names only, never a value)."""
        if obj.kind == ProviderKind.MOCK:
            return "not needed"
        try:
            return "yes" if obj.name in credentialed_providers() else "no live worker has it"
        except RedisError:
            return "? (Redis unreachable)"


WAITING_CHOICES = [
    ("drain", "Drain them: they are still served, then it stops"),
    ("cancel", "Cancel them, with the reason"),
]


class ServedModelForm(forms.ModelForm):
    """A served model, and — should this save disable it — what becomes of the requests waiting
    for it (the default drains them)."""

    waiting = forms.ChoiceField(
        choices=WAITING_CHOICES,
        initial="drain",
        required=False,
        widget=forms.RadioSelect,
        label="If you disable it, the requests waiting for it",
    )

    class Meta:
        model = ServedModel
        fields = ["provider", "name", "enabled", "options", "group", "weight"]


@admin.register(ServedModel)
class ServedModelAdmin(SaysWhatDeletingDoes):
    form = ServedModelForm
    list_display = ["__str__", "provider", "name", "enabled", "draining", "group", "weight", "queue"]
    list_filter = ["enabled", "provider", "group"]
    search_fields = ["name"]
    list_select_related = ["provider", "group"]
    inlines = [PriceInline]

    def get_form(
        self, request: HttpRequest, obj: ServedModel | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        waiting = served_model_waiting(served_model=obj) if obj is not None and obj.pk else 0
        form.base_fields["waiting"].help_text = (
            f"{waiting} request(s) sent to it alone wait now. Drained, its queue stays consumed and its line "
            "watched until the last has ended; it takes no new requests either way."
        )
        return form

    def save_model(self, request: HttpRequest, obj: ServedModel, form: Any, change: bool) -> None:
        disabling = change and obj.enabled_before and not obj.enabled
        super().save_model(request, obj, form, change)
        if not disabling:
            return
        if form.cleaned_data.get("waiting") == "cancel":
            reason = f"Cancelled: {obj} was disabled ({_who(request)})."
            n = served_model_waiting_cancel(provider=obj.provider.name, model=obj.name, reason=reason)
            self.message_user(request, f"{obj} disabled; {n} waiting request(s) cancelled.")
        else:
            n = served_model_waiting(served_model=obj)
            self.message_user(
                request, f"{obj} disabled; {n} waiting request(s) drain (they are still served)."
            )

    def deletion_warning(self, obj: ServedModel) -> str | None:
        waiting = served_model_waiting(served_model=obj)
        if not waiting:
            return None
        return (
            f"{waiting} queued request(s) wait for {obj}. Deleting it cancels them, with the reason. "
            "To let them finish instead, disable it (they drain) and delete it once it no longer drains."
        )

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
        "weight",
        "max_priority",
        "created_at",
    ]
    list_filter = ["is_active", "max_priority"]
    search_fields = ["name", "prefix"]
    fields = ["name", "is_active", "weight", "max_priority", "prefix", "user", "created_at"]
    readonly_fields = ["prefix", "user", "created_at"]
    inlines = [KeyQuotaInline, BudgetInline]
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

    actions = ["deactivate"]  # for those who may change keys (the action's permissions)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            was_active = ApiKey.objects.filter(pk=obj.pk, is_active=True).exists()
            super().save_model(request, obj, form, change)
            if was_active and not obj.is_active:
                self._cancelled(request, api_key_deactivate(api_key=obj, by=_who(request)))
            return
        key, raw = api_key_create(name=obj.name)
        key.is_active = obj.is_active
        key.save(update_fields=["is_active"])
        obj.pk = key.pk
        obj.refresh_from_db()
        obj.raw_key = raw

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None) -> Any:
        """The new key on the page that answers the form, once: not through the messages cookie
        (signed, not encrypted) or the session (stored in the database)."""
        if obj.raw_key is None:
            return super().response_add(request, obj, post_url_continue)
        # (The admin's views are never cached: the page carries Cache-Control: no-store.)
        return TemplateResponse(
            request,
            "admin/completions/apikey/created.html",
            {**self.admin_site.each_context(request), "key": obj, "raw_key": obj.raw_key},
        )

    @admin.action(
        description="Deactivate the selected keys and cancel their queued requests", permissions=["change"]
    )
    def deactivate(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        self._cancelled(request, sum(api_key_deactivate(api_key=k, by=_who(request)) for k in queryset))

    def _cancelled(self, request: HttpRequest, n: int) -> None:
        self.message_user(request, f"Deactivated; {n} queued request(s) cancelled.", messages.SUCCESS)


@admin.register(CompletionRequest)
class CompletionRequestAdmin(ReadOnlyAdmin):
    # Narrow columns (a short id, one "served by" column, compact times) so that the list fits
    # a 1,400 px screen.
    list_display = [
        "short_id",
        "status",
        "served",
        "client_key",
        "upstream_status",
        "attempts",
        "created",
        "queue_wait",
        "upstream_time",
    ]
    list_filter = ["status", "operation", "priority", "served_tier", "group", "provider", "model", "api_key"]
    search_fields = ["id"]
    search_help_text = "A request id, or its first characters (at least 4)."
    date_hierarchy = "created_at"
    list_select_related = ["api_key"]
    show_full_result_count = False
    # The record as a person reads it: who and what, then the timing, then the bodies.
    fields = [
        "id",
        "status",
        "api_key",
        "operation",
        "priority",
        "tier",
        "served_tier",
        "provider_batch",
        "client_batch",
        "custom_id",
        "group",
        "fallback_from",
        "provider",
        "model",
        "attempts_made",
        "upstream_status",
        "times",
        "tokens",
        "money",
        "payload_pretty",
        "response_pretty",
        "error_pretty",
    ]

    @admin.display(description="Id", ordering="id")
    def short_id(self, obj: CompletionRequest) -> str:
        return str(obj.id)[:8]

    @admin.display(description="Served by")
    def served(self, obj: CompletionRequest) -> str:
        where = f"{obj.provider}/{obj.model}"
        return f"{obj.group} → {where}" if obj.group else where

    @admin.display(description="Client key", ordering="api_key__name")
    def client_key(self, obj: CompletionRequest) -> str:
        return obj.api_key.name

    @admin.display(description="Created", ordering="created_at")
    def created(self, obj: CompletionRequest) -> str:
        return _ms(obj.created_at)

    @admin.display(description="Attempts")
    def attempts_made(self, obj: CompletionRequest) -> str:
        trail = "; ".join(
            f"{a.get('attempt')}: {a.get('deployment')} → {a.get('status') or 'no answer'}"
            for a in obj.served_by
        )
        return f"{obj.attempts}" + (f" ({trail})" if trail else "")

    @admin.display(description="Times")
    def times(self, obj: CompletionRequest) -> str:
        waited = "–" if obj.queue_seconds is None else _duration(obj.queue_seconds)
        upstream = "–" if obj.upstream_seconds is None else _duration(obj.upstream_seconds)
        return (
            f"created {_ms(obj.created_at)}, started {_ms(obj.started_at)}, finished {_ms(obj.finished_at)}; "
            f"waited in line {waited}, upstream {upstream}"
        )

    @admin.display(description="Tokens")
    def tokens(self, obj: CompletionRequest) -> str:
        used = "–" if obj.input_tokens is None else f"{obj.input_tokens} in + {obj.output_tokens or 0} out"
        return f"reserved {obj.estimated_input_tokens} in + {obj.estimated_output_tokens} out; used {used}"

    @admin.display(description="Cost (USD)")
    def money(self, obj: CompletionRequest) -> str:
        actual = "–" if obj.cost is None else f"${obj.cost}"
        prices = obj.prices
        at = (
            f" at ${prices['input']} in, ${prices['cached_input']} cached, ${prices['output']} out per 1M tokens"
            if prices
            else (" (its deployment had no prices)" if obj.cost is not None else "")
        )
        return f"reserved ${obj.estimated_cost}; cost {actual}{at}"

    @admin.display(description="Payload")
    def payload_pretty(self, obj: CompletionRequest) -> str:
        return _pretty(obj.payload)

    @admin.display(description="Response")
    def response_pretty(self, obj: CompletionRequest) -> str:
        return _pretty(obj.response)

    @admin.display(description="Error")
    def error_pretty(self, obj: CompletionRequest) -> str:
        return _pretty(obj.error)

    actions = ["cancel"]

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("completions.change_completionrequest")

    @admin.action(description="Cancel the selected requests that are queued", permissions=["cancel"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[CompletionRequest]) -> None:
        reason = f"Cancelled from the admin ({_who(request)})."
        n = sum(
            completion_request_cancel(request=r, reason=reason, retries_too=True)
            for r in queryset.filter(status=CompletionStatus.QUEUED)
        )
        self.message_user(request, f"{n} queued request(s) cancelled; running or finished ones are left.")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[CompletionRequest], search_term: str
    ) -> tuple[QuerySet[CompletionRequest], bool]:
        # By id: the whole of it, or its first characters as the list shows them (at least 4
        # hex digits, so that a stray letter does not scan the whole history).
        term = search_term.strip().lower()
        if not term:
            return queryset, False
        try:
            return queryset.filter(id=uuid.UUID(term)), False
        except ValueError:
            pass
        digits = term.replace("-", "")
        if len(digits) >= 4 and all(c in "0123456789abcdef-" for c in term):
            # A native uuid column compares as text with its hyphens; SQLite's holds 32 digits.
            prefix = term if connection.features.has_native_uuid_field else digits
            return queryset.filter(id__startswith=prefix), False
        return queryset.none(), False

    @admin.display(description="Queue wait")
    def queue_wait(self, obj: CompletionRequest) -> str:
        if obj.queue_seconds is not None:
            return _duration(obj.queue_seconds)
        if obj.status == CompletionStatus.QUEUED:  # still waiting: so far
            return f"{_duration((timezone.now() - obj.created_at).total_seconds())} so far"
        return "–"

    @admin.display(description="Upstream")
    def upstream_time(self, obj: CompletionRequest) -> str:
        return _duration(obj.upstream_seconds) if obj.upstream_seconds is not None else "–"


@admin.register(ProviderBatch)
class ProviderBatchAdmin(ReadOnlyAdmin):
    """The batch jobs the balancer sent to providers (completions.batching), read-only: each with
    how its items ended and a link to them."""

    list_display = [
        "short_id",
        "deployment",
        "state",
        "upstream_status",
        "items",
        "succeeded",
        "failed",
        "rerun",
        "deadline",
        "created_at",
        "ended_at",
    ]
    list_filter = ["state", "provider", "model"]
    search_fields = ["id", "upstream_id"]
    fields = [
        "id",
        "deployment",
        "upstream_id",
        "state",
        "upstream_status",
        "items",
        "enqueued_tokens",
        "succeeded",
        "failed",
        "rerun",
        "deadline",
        "prices",
        "error",
        "created_at",
        "submitted_at",
        "ended_at",
        "its_requests",
    ]

    @admin.display(description="Id", ordering="id")
    def short_id(self, obj: ProviderBatch) -> str:
        return str(obj.id)[:8]

    @admin.display(description="Deployment")
    def deployment(self, obj: ProviderBatch) -> str:
        return f"{obj.provider}/{obj.model}"

    @admin.display(description="Its requests")
    def its_requests(self, obj: ProviderBatch) -> str:
        url = reverse("admin:completions_completionrequest_changelist")
        return format_html(
            '<a href="{}?provider_batch__id__exact={}">the {} requests it took</a>', url, obj.id, obj.items
        )


@admin.register(ClientBatch)
class ClientBatchAdmin(ReadOnlyAdmin):
    """The batches clients sent through the SDKs' Batch APIs (completions.client_batches),
    read-only: how many lines, which ended how, and a link to its requests."""

    list_display = [
        "short_id",
        "kind",
        "api_key",
        "endpoint",
        "total",
        "refused_lines",
        "created_at",
        "ended_at",
    ]
    list_filter = ["kind", "api_key"]
    list_select_related = ["api_key"]
    search_fields = ["id"]
    fields = [
        "id",
        "kind",
        "api_key",
        "endpoint",
        "window_seconds",
        "total",
        "refused",
        "metadata",
        "created_at",
        "cancelled_at",
        "ended_at",
        "its_requests",
    ]

    @admin.display(description="Id", ordering="id")
    def short_id(self, obj: ClientBatch) -> str:
        return str(obj.id)[:8]

    @admin.display(description="Refused lines")
    def refused_lines(self, obj: ClientBatch) -> int:
        return len(obj.refused or [])

    @admin.display(description="Its requests")
    def its_requests(self, obj: ClientBatch) -> str:
        url = reverse("admin:completions_completionrequest_changelist")
        return format_html(
            '<a href="{}?client_batch__id__exact={}">its {} requests</a>', url, obj.id, obj.total
        )


def _ms(at: Any) -> str:
    """A time to the millisecond, in the server's time zone."""
    return timezone.localtime(at).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if at else "–"


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{1000 * seconds:.0f} ms"
    if seconds < 120:
        return f"{seconds:.3f} s"
    return f"{int(seconds // 60)} min {seconds % 60:.1f} s"


def _pretty(value: Any) -> str:
    if value is None:
        return "–"
    return format_html(
        '<pre style="white-space: pre-wrap; margin: 0">{}</pre>',
        json.dumps(value, indent=2, ensure_ascii=False),
    )


def _who(request: HttpRequest) -> str:
    return f"by {request.user.get_username()}" if request.user.is_authenticated else "from the admin"
