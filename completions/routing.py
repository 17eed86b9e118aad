"""Where a request may go: the deployments of its model group (or its one served model) that its
key may use and whose buckets can ever hold its cost, and when its group hands it to the group's
fallback. Pure reads; the writes that follow are completions.services' and maintenance's."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from completions.lines import quota_get, request_cost
from completions.models import ApiKey, ModelGroup, ServedModel, wire_format
from completions.providers import ProviderConfig
from completions.selectors import key_may_use, model_group_get
from completions.workers import callable_providers
from ratelimit import limiter
from ratelimit.lines import cost_over_capacity, key_allows_model
from ratelimit.models import KeyQuota

logger = logging.getLogger(__name__)


class CostExceedsLimit(Exception):
    """The request's estimated cost is larger than its model's bucket: it could never start."""


class ModelNotAllowed(Exception):
    """The client's key may not use this model."""


@dataclass(frozen=True)
class Route:
    """Where a request may go. group: its group's name ("" for a model served alone);
    deployments: those it may use, in order (the first is recorded until one is chosen);
    mask: their ids joined by "|" for its group's line ("" for any, new ones included);
    cost: its reservation (input, output tokens)."""

    group: str
    deployments: list[ServedModel]
    mask: str
    cost: tuple[int, int]

    @property
    def first(self) -> ServedModel:
        return self.deployments[0]


def deployments_for(
    *, api_key: ApiKey, served_model: ServedModel, group: ModelGroup | None
) -> list[ServedModel]:
    """The deployments a key's request to `group` (or `served_model` alone) may go to."""
    _, candidates = _candidates(served_model, group)
    return [m for m in candidates if key_may_use(api_key, m)]


def key_may_send(*, api_key: ApiKey, served_model: ServedModel, group: ModelGroup | None) -> bool:
    """Whether a key may send to `group` (or `served_model` alone): to one of its deployments at
    least. The APIs answer a model a key may not use as one that does not exist, so that a
    restricted key cannot learn what else is served, nor by which provider."""
    return bool(deployments_for(api_key=api_key, served_model=served_model, group=group))


def unavailable_reason(*, api_key: ApiKey, served_model: ServedModel, group: ModelGroup | None) -> str | None:
    """Why a key's request to `group` (or `served_model`) would fail for certain now — no live
    worker has the API key of any provider it may go to — or None."""
    deployments = deployments_for(api_key=api_key, served_model=served_model, group=group)
    return callable_providers.reason([(m.provider.name, m.provider.kind) for m in deployments])


def request_route(
    *,
    key_quota: KeyQuota | None,
    served_model: ServedModel,
    group: ModelGroup | None,
    payload: dict[str, Any],
    operation: str = "chat",
) -> Route:
    """The route of a request sent to `group` (any of its deployments of `served_model`'s
    format), or to `served_model` alone (through its group's line if it is a deployment).
    Raises ModelNotAllowed when the key may use none of them, CostExceedsLimit when the cost
    can never fit the key's buckets or those of every one of them (the others are left out)."""
    group_name, candidates = _candidates(served_model, group)
    allowed = [m for m in candidates if key_allows_model(key_quota=key_quota, served_model_id=m.pk)]
    if not allowed:
        raise ModelNotAllowed(f"This API key may not use {group_name if group else served_model}.")
    estimate_with = allowed[0]
    cost = request_cost(
        served_model=estimate_with,
        quota=quota_get(served_model=estimate_with),
        payload={**payload, "model": estimate_with.name},
        operation=operation,
    )
    too_large = cost_over_capacity(
        quota=key_quota, input_tokens=cost[0], output_tokens=cost[1], owner="your API key's"
    )
    if too_large:
        raise CostExceedsLimit(too_large)
    fitting: list[ServedModel] = []
    problems: list[str] = []
    for candidate in allowed:
        problem = cost_over_capacity(
            quota=quota_get(served_model=candidate),
            input_tokens=cost[0],
            output_tokens=cost[1],
            owner="the model's",
        )
        if problem:
            problems.append(problem)
        else:
            fitting.append(candidate)
    if not fitting:
        raise CostExceedsLimit(problems[0])
    everyone = group is not None and len(fitting) == len(group.deployments_served)
    mask = "" if not group_name or everyone else "|".join(str(m.pk) for m in fitting)
    return Route(group=group_name, deployments=fitting, mask=mask, cost=cost)


def _candidates(served_model: ServedModel, group: ModelGroup | None) -> tuple[str, list[ServedModel]]:
    """The group a request waits in ("": none) and the deployments that may serve it, in order:
    a group's enabled ones of `served_model`'s format, else `served_model` alone."""
    if group is not None:
        flavour = flavour_of_model(served_model)
        return group.name, [m for m in group.deployments_served if flavour_of_model(m) == flavour]
    return (served_model.group.name if served_model.group is not None else ""), [served_model]


def fallback_route(
    *,
    key_quota: KeyQuota | None,
    served_model: ServedModel,
    group: ModelGroup,
    route: Route,
    payload: dict[str, Any],
    max_wait: float | None,
    operation: str = "chat",
) -> tuple[ModelGroup, Route] | None:
    """The group's fallback and the request's route there, when the group cannot serve the
    request: none of its deployments it may use is healthy now (all cooling down), or its wait
    in line is longer than the request's `max_wait`. None otherwise, or when the fallback
    cannot take it either (its key, its cost, its format)."""
    if group.fallback_id is None or not _cannot_serve(group, route, max_wait):
        return None
    fallback = model_group_get(name=group.fallback.name) if group.fallback is not None else None
    if fallback is None or not fallback.deployments_served:
        return None
    try:
        return fallback, request_route(
            key_quota=key_quota,
            served_model=served_model,
            group=fallback,
            payload=payload,
            operation=operation,
        )
    except (ModelNotAllowed, CostExceedsLimit):
        return None


def _cannot_serve(group: ModelGroup, route: Route, max_wait: float | None) -> bool:
    try:
        st = limiter.status(group.line, input_tokens=route.cost[0], output_tokens=route.cost[1])
    except RedisError:  # unknown: it stays where it was sent
        return False
    usable = {str(m.pk) for m in route.deployments}
    healthy = [d for d in st.deployments if d.id in usable and d.cooling_seconds <= 0]
    return not healthy or (max_wait is not None and st.estimated_wait_seconds > max_wait)


def group_unhealthy(group: ModelGroup) -> bool:
    """Whether every deployment of `group` is cooling down now (False when Redis cannot say)."""
    try:
        st = limiter.status(group.line, input_tokens=0, output_tokens=0)
    except RedisError:
        return False
    return bool(st.deployments) and all(d.cooling_seconds > 0 for d in st.deployments)


def flavour_of(config: ProviderConfig) -> str:
    """The wire format a provider speaks for a model: "openai" or "anthropic"."""
    return wire_format(config.kind, config.option("format"))


def flavour_of_model(served: ServedModel) -> str:
    return served.wire_format
