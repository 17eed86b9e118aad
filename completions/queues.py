"""GET /api/v1/queues and /api/v1/queues/{provider}/{model}: the state of every model's and model
group's line."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from completions.authentication import api_key_of
from completions.lines import model_line, quota_get
from completions.models import ApiKey, ModelGroup, ServedModel
from completions.selectors import key_may_use, model_groups_served, served_model_get, served_models_for
from ratelimit.limiter import LineStatus
from ratelimit.models import Quota
from ratelimit.selectors import group_status, line_status


def served_line_status(
    *, served_model: ServedModel, quota: Quota | None, input_tokens: int = 100, st: LineStatus | None = None
) -> dict[str, Any]:
    """One served model's line, named (`st`: its limiter state, read already)."""
    return {
        "provider": served_model.provider.name,
        "model": served_model.name,
        "queue": served_model.queue_name,
        **line_status(line=model_line(served_model), quota=quota, input_tokens=input_tokens, st=st),
    }


def group_line_status(
    *,
    group: ModelGroup,
    deployments: list[ServedModel],
    input_tokens: int = 100,
    api_key: ApiKey | None = None,
    st: LineStatus | None = None,
) -> dict[str, Any]:
    """One model group's line, each of its `deployments` by name, and its flows (client keys: by
    id; `yours` marks `api_key`'s; `st`: the line's limiter state, read already)."""
    quotas = {str(m.pk): quota_get(served_model=m) for m in deployments}
    line_part, states = group_status(line=group.line, quotas=quotas, input_tokens=input_tokens, st=st)
    for flow in line_part["flows"]:
        flow["yours"] = api_key is not None and flow["flow"] == str(api_key.pk)
    return {
        "group": group.name,
        "policy": group.policy,
        "scheduling": group.scheduling,
        "queue": group.queue_name,
        **line_part,
        "deployments": [
            {"provider": m.provider.name, "model": m.name, "weight": m.weight, **states.get(str(m.pk), {})}
            for m in deployments
        ],
    }


def group_line_status_list(*, api_key: ApiKey, input_tokens: int = 100) -> list[dict[str, Any]]:
    """The lines of the groups `api_key` may use, with the deployments it may use."""
    out = []
    for group in model_groups_served():
        usable = served_models_for(api_key, group.deployments_served)
        if usable:
            out.append(
                group_line_status(group=group, deployments=usable, input_tokens=input_tokens, api_key=api_key)
            )
    return out


def served_line_status_list(*, api_key: ApiKey, input_tokens: int = 100) -> list[dict[str, Any]]:
    """The lines of the models `api_key` may use."""
    quotas = {q.served_model_id: q for q in Quota.objects.all()}
    return [
        served_line_status(served_model=m, quota=quotas.get(m.id), input_tokens=input_tokens)
        for m in served_models_for(api_key)
    ]


class QueueQuerySerializer(serializers.Serializer[Any]):
    input_tokens = serializers.IntegerField(required=False, min_value=0, max_value=10_000_000, default=100)


INPUT_PARAM = OpenApiParameter(
    "input_tokens", int, description="Prompt tokens of the new request whose wait is estimated (default 100)."
)


class QueueListApi(APIView):
    """Every served model's line (`results`) and every model group's (`groups`, each deployment
    with its own limits, levels and cooldown): waiting and in-flight requests, limits, bucket
    levels, and the estimated wait of a new request."""

    @extend_schema(parameters=[INPUT_PARAM], responses=OpenApiTypes.OBJECT, operation_id="queues_list")
    def get(self, request: Request) -> Response:
        query = QueueQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        api_key, input_tokens = api_key_of(request), query.validated_data["input_tokens"]
        return Response(
            {
                "results": served_line_status_list(api_key=api_key, input_tokens=input_tokens),
                "groups": group_line_status_list(api_key=api_key, input_tokens=input_tokens),
            }
        )


class QueueDetailApi(APIView):
    """One model's line."""

    @extend_schema(parameters=[INPUT_PARAM], responses=OpenApiTypes.OBJECT, operation_id="queues_retrieve")
    def get(self, request: Request, provider: str, model: str) -> Response:
        query = QueueQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        served = served_model_get(provider=provider, model=model)
        # A model the key may not use is, to that key, not served (the same 404).
        if served is None or not key_may_use(api_key_of(request), served):
            raise NotFound(f"{provider}/{model} is not served.")
        return Response(
            served_line_status(
                served_model=served,
                quota=quota_get(served_model=served),
                input_tokens=query.validated_data["input_tokens"],
            )
        )
