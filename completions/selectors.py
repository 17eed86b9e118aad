"""Reads."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist
from django.db.models import Q, QuerySet
from django.utils import timezone
from redis.exceptions import RedisError

from completions.models import (
    ApiKey,
    CompletionRequest,
    CompletionStatus,
    ModelGroup,
    Provider,
    ProviderKind,
    ServedModel,
    group_queue,
)
from completions.providers import ProviderConfig
from completions.registry_cache import registry_cache
from ratelimit import limiter
from ratelimit.lines import key_allows_model, key_line, key_quota_of

# The SDKs' own key variables, used when a provider names none.
DEFAULT_KEY_ENV = {ProviderKind.OPENAI: "OPENAI_API_KEY", ProviderKind.ANTHROPIC: "ANTHROPIC_API_KEY"}


def api_key_hash(raw_key: str) -> str:
    # Keys are 256-bit random strings, so a fast hash is as good as a slow one here: there is no
    # dictionary to attack.
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_get_by_raw(*, raw_key: str) -> ApiKey | None:
    """The active key matching `raw_key` (from the registry cache). The lookup is by hash; the
    final comparison is constant-time."""
    digest = api_key_hash(raw_key)
    key = registry_cache.get(("api_key", digest), lambda: _api_key_load(digest))
    if key is None or not hmac.compare_digest(key.key_hash, digest):
        return None
    return key


def _api_key_load(digest: str) -> ApiKey | None:
    # With its quota (if any) in the same query: submission and the x-ratelimit headers need it.
    key = ApiKey.objects.select_related("quota").filter(key_hash=digest, is_active=True).first()
    if key is not None:
        try:
            quota = key.quota
        except ObjectDoesNotExist:
            quota = None
        if quota is not None:
            # Loaded now, so that a cached key never queries again.
            quota.allowed_model_ids = frozenset(quota.allowed_models.values_list("pk", flat=True))
    return key


def served_model_get(*, provider: str, model: str) -> ServedModel | None:
    return (
        ServedModel.objects.select_related("provider", "group")
        .filter(provider__name=provider, name=model, enabled=True)
        .first()
    )


def served_models_list() -> list[ServedModel]:
    return list(ServedModel.objects.select_related("provider", "group").filter(enabled=True))


def served_models_named(name: str) -> list[ServedModel]:
    """Served models called `name`, or `provider/model` for `name` of that form (from the
    registry cache)."""

    def load() -> list[ServedModel]:
        query = Q(name=name)
        provider, _, model = name.partition("/")
        if model:
            query |= Q(provider__name=provider, name=model)
        return list(ServedModel.objects.select_related("provider", "group").filter(query, enabled=True))

    return registry_cache.get(("models_named", name), load)


def key_may_use(api_key: ApiKey, served_model: ServedModel) -> bool:
    return key_allows_model(key_quota=key_quota_of(api_key), served_model_id=served_model.pk)


def served_models_for(api_key: ApiKey, served: list[ServedModel] | None = None) -> list[ServedModel]:
    """The served models (of `served`, default: all) `api_key` may use: a restricted key sees
    only its own, everywhere."""
    return [m for m in (served_models_list() if served is None else served) if key_may_use(api_key, m)]


def served_model_names(api_key: ApiKey) -> list[str]:
    """The groups and `provider/model` of every model `api_key` may use, for error messages."""
    groups = [g.name for g in model_groups_served() if served_models_for(api_key, g.deployments_served)]
    return groups + [str(m) for m in served_models_for(api_key)]


def model_group_get(*, name: str) -> ModelGroup | None:
    """A model group with its enabled deployments loaded (`deployments_served`, in order), from
    the registry cache; None when no such group exists."""

    def load() -> ModelGroup | None:
        group = ModelGroup.objects.filter(name=name).first()
        if group is not None:
            group.deployments_served = group_deployments(group)
        return group

    return registry_cache.get(("model_group", name), load)


def group_deployments(group: ModelGroup) -> list[ServedModel]:
    """A group's enabled deployments, in the order ties between them are broken."""
    return list(group.deployments.select_related("provider", "group").filter(enabled=True).order_by("pk"))


def model_groups_served(served: list[ServedModel] | None = None) -> list[ModelGroup]:
    """Every group with at least one enabled deployment, its deployments loaded (in the order
    ties between them are broken; from `served`, the enabled models loaded already, if given):
    two queries, however many groups, or one."""
    if served is None:
        served = list(ServedModel.objects.select_related("provider", "group").filter(enabled=True))
    by_group: dict[int, list[ServedModel]] = {}
    for m in sorted(served, key=lambda m: m.pk):
        if m.group_id is not None:
            by_group.setdefault(m.group_id, []).append(m)
    groups = []
    for group in ModelGroup.objects.all():
        group.deployments_served = by_group.get(group.pk, [])
        if group.deployments_served:
            groups.append(group)
    return groups


def deployment_named(*, provider: str, model: str) -> ServedModel | None:
    """A served model by its provider's and its own name, enabled or not (from the registry
    cache)."""

    def load() -> ServedModel | None:
        return (
            ServedModel.objects.select_related("provider", "group")
            .filter(provider__name=provider, name=model)
            .first()
        )

    return registry_cache.get(("deployment_named", provider, model), load)


def deployment_get(*, deployment_id: str) -> ServedModel | None:
    """An enabled served model by id (a grant names the deployment it goes to), from the
    registry cache."""

    def load() -> ServedModel | None:
        if not deployment_id.isdigit():
            return None
        return (
            ServedModel.objects.select_related("provider", "group")
            .filter(pk=int(deployment_id), enabled=True)
            .first()
        )

    return registry_cache.get(("deployment", deployment_id), load)


def served_queue_names() -> set[str]:
    """Every queue a worker consumes: each served model's own, and each group's (a group removed
    while requests wait for it too: its line still knows its former deployments, and drains); and
    the queue of each disabled model that requests still wait for (it drains)."""
    models = served_models_list()
    groups = {g.name for g in model_groups_served(models)} | queued_group_names()
    return {m.queue_name for m in [*models, *draining_models()]} | {group_queue(g) for g in groups}


def draining_models() -> list[ServedModel]:
    """Disabled models still serving the requests accepted before (ServedModel.draining): they
    take no new requests; their queues stay consumed and their lines watched until none is left."""
    return list(ServedModel.objects.select_related("provider", "group").filter(enabled=False, draining=True))


def served_model_in_use(*, served_model: ServedModel) -> bool:
    """Whether requests sent to `served_model` alone are queued or running."""
    return CompletionRequest.objects.filter(
        status__in=[CompletionStatus.QUEUED, CompletionStatus.RUNNING],
        provider=served_model.provider.name,
        model=served_model.name,
        group="",
    ).exists()


def served_model_waiting(*, served_model: ServedModel) -> int:
    """How many requests sent to `served_model` alone are queued (its queue and line)."""
    return CompletionRequest.objects.filter(
        status=CompletionStatus.QUEUED, provider=served_model.provider.name, model=served_model.name, group=""
    ).count()


def queued_group_names() -> set[str]:
    """The groups that queued requests were sent to, one index seek per group (a loose index scan
    of request_status_group): the tend asks every two seconds, and a DISTINCT over the queued
    rows took 230 ms with 100,000 of them."""
    found: set[str] = set()
    after = ""  # "" is no group: the first seek starts past it
    while True:
        name = (
            CompletionRequest.objects.filter(status=CompletionStatus.QUEUED, group__gt=after)
            .order_by("group")
            .values_list("group", flat=True)
            .first()
        )
        if name is None:
            return found
        found.add(name)
        after = name


def provider_config_get(*, provider: str, model: str) -> ProviderConfig | None:
    """How to call `provider` for `model` — served, or disabled and draining — or None when
    that pair no longer exists (from the registry cache)."""

    def load() -> ProviderConfig | None:
        # Enabled or not: a disabled model still serves the requests accepted before (it drains).
        served = deployment_named(provider=provider, model=model)
        return None if served is None else _config(served)

    return registry_cache.get(("provider_config", provider, model), load)


def provider_configs_all() -> list[ProviderConfig]:
    return [_config(m) for m in served_models_list()]


def _config(served: ServedModel) -> ProviderConfig:
    p: Provider = served.provider
    return ProviderConfig.build(
        name=p.name,
        kind=p.kind,
        base_url=p.base_url,
        api_key_env=p.api_key_env,
        default_key_env=DEFAULT_KEY_ENV.get(ProviderKind(p.kind), ""),
        timeout=p.timeout_seconds,
        options={**p.options, **served.options},
        max_reply_bytes=settings.BALANCER_MAX_REPLY_BYTES,
    )


def completion_request_list(*, api_key: ApiKey) -> QuerySet[CompletionRequest]:
    return (
        CompletionRequest.objects.filter(api_key=api_key)
        .select_related("client_batch")
        .order_by("-created_at")
    )


def completion_request_get(*, api_key: ApiKey, request_id: uuid.UUID | str) -> CompletionRequest | None:
    """A client's own request; another client's is indistinguishable from a missing one."""
    return (
        CompletionRequest.objects.filter(api_key=api_key, id=request_id)
        .select_related("client_batch")
        .first()
    )


def completion_request_status(*, request_id: uuid.UUID | str) -> str | None:
    return CompletionRequest.objects.filter(id=request_id).values_list("status", flat=True).first()


def cooling_deployments() -> list[dict[str, Any]]:
    """Deployments cooling down now, in every group (for /ready's detail)."""
    out = []
    for group in model_groups_served():
        by_id = {str(m.pk): m for m in group.deployments_served}
        for dep in limiter.status(group.line, input_tokens=0, output_tokens=0).deployments:
            served = by_id.get(dep.id)
            if served is not None and dep.cooling_seconds > 0:
                out.append(
                    {
                        "group": group.name,
                        "deployment": str(served),
                        "seconds_left": round(dep.cooling_seconds, 3),
                        "failures_in_a_row": dep.strikes,
                        "last_fault": dep.fault,
                    }
                )
    return out


def completion_request_place(*, request: CompletionRequest) -> dict[str, Any] | None:
    """Where a queued request stands, for its client: the line it waits in ("model": its model's
    or group's; "key": its key's own rate line, before that; "budget": none yet, its budget's next
    period, when it starts), its position there (0: next) and
    when it may start, estimated from the costs ahead of it and the line's rates (ignoring calls
    in flight). None when it is not waiting in a line (not queued, an unlimited model, or Redis
    away: this is a courtesy, never a reason to fail a read)."""
    if request.status != CompletionStatus.QUEUED:
        return None
    if request.budget_wait_until is not None:  # in no line until its budget's next period
        wait = max((request.budget_wait_until - timezone.now()).total_seconds(), 0.0)
        return {
            "line": "budget",
            "position": None,
            "estimated_wait_seconds": round(wait, 3),
            "estimated_start": request.budget_wait_until.isoformat().replace("+00:00", "Z"),
        }
    lines = [("model", request.line)] if request.line else []
    if request.key_limited:
        lines.append(("key", key_line(request.api_key_id)))
    try:
        for kind, line in lines:
            found = limiter.place(line, str(request.id))
            if found is not None:
                start = timezone.now() + timedelta(seconds=found.estimated_wait_seconds)
                return {
                    "line": kind,
                    "position": found.position,
                    "estimated_wait_seconds": round(found.estimated_wait_seconds, 3),
                    "estimated_start": start.isoformat().replace("+00:00", "Z"),
                }
    except RedisError:
        return None
    return None
