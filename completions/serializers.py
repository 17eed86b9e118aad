"""Input validation and output shapes of the completions API."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field, inline_serializer
from rest_framework import serializers
from rest_framework.reverse import reverse

from completions.client_batches import batch_id
from completions.models import CompletionRequest, ModelGroup, Operation, Priority, ServedModel
from completions.routing import key_may_send
from completions.selectors import (
    completion_request_place,
    model_group_get,
    served_model_get,
    served_model_names,
    served_models_named,
)
from completions.tiers import asked_tier
from completions.tokens import embedding_input_problem


class CompletionCreateSerializer(serializers.Serializer[Any]):
    provider = serializers.CharField(
        max_length=64,
        required=False,
        help_text="A served provider: openai, anthropic, mock… Omitted: `model` is a model group "
        "(served by any of its deployments) or a model only one provider serves.",
    )
    model = serializers.CharField(
        max_length=200, help_text="A model served by that provider, or a model group."
    )
    payload = serializers.JSONField(help_text="The provider's own request body (messages, max_tokens…).")
    wait = serializers.FloatField(
        required=False,
        min_value=0,
        help_text="Seconds to wait for the result before answering 202 (default 30, capped by a setting).",
    )
    max_wait = serializers.FloatField(
        required=False,
        min_value=0,
        help_text="Deadline: seconds the request may wait in line; then it becomes 'expired'.",
    )
    operation = serializers.ChoiceField(
        choices=Operation.choices,
        default=Operation.CHAT,
        help_text="chat (the default: payload is a chat completion or messages body) or embeddings "
        "(payload is an OpenAI embeddings body; cost = its input tokens).",
    )
    priority = serializers.ChoiceField(
        choices=Priority.choices,
        default=Priority.DEFAULT,
        help_text="Its class in line: interactive goes before default, default before batch (up to "
        "the key's highest).",
    )

    tier = serializers.CharField(
        required=False,
        max_length=16,
        help_text="The tier to send it in: auto (the default: a batch-class request goes the cheapest way "
        "its max_wait leaves time for — a provider batch, flex — everything else realtime), realtime, "
        "flex or batch (only to deployments that offer it). A payload with service_tier flex asks for flex.",
    )

    def validate_payload(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object: the provider's request body.")
        if value.get("stream"):
            raise serializers.ValidationError(
                "Streaming is not available on /api/v1/completions; send stream=false or omit it."
            )
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        served, group = self._resolve(attrs.get("provider"), attrs["model"])
        api_key = self.context["api_key"]
        if served is None or not key_may_send(api_key=api_key, served_model=served, group=group):
            names = ", ".join(served_model_names(self.context["api_key"])) or "none"
            named = f"{attrs['provider']}/{attrs['model']}" if attrs.get("provider") else attrs["model"]
            raise serializers.ValidationError({"model": [f"{named} is not served. Served models: {names}."]})
        if attrs.get("operation") == Operation.EMBEDDINGS:
            problem = embedding_input_problem(attrs["payload"].get("input"))
            if problem:
                raise serializers.ValidationError({"payload": [problem]})
        payload_model = attrs["payload"].get("model")
        if payload_model is not None and payload_model != attrs["model"]:
            raise serializers.ValidationError(
                {"payload": [f"payload.model is {payload_model!r} but model is {attrs['model']!r}."]}
            )
        try:
            attrs["tier"] = asked_tier(attrs.get("tier"), attrs["payload"])
        except ValueError as exc:
            raise serializers.ValidationError({"tier": [str(exc)]}) from None
        attrs["served_model"], attrs["group"] = served, group
        attrs["wait"] = min(
            attrs.get("wait", settings.BALANCER_DEFAULT_WAIT_SECONDS), settings.BALANCER_MAX_WAIT_SECONDS
        )
        return attrs

    @staticmethod
    def _resolve(provider: str | None, model: str) -> tuple[ServedModel | None, ModelGroup | None]:
        """A provider's model (pinned: the only deployment it may go to), else a group (any of
        its deployments, of its first one's format), else the one provider's model of that name."""
        if provider:
            return served_model_get(provider=provider, model=model), None
        group = model_group_get(name=model)
        if group is not None and group.deployments_served:
            return group.deployments_served[0], group
        named = [m for m in served_models_named(model) if m.name == model]
        return (named[0] if len(named) == 1 else None), None


class WaitQuerySerializer(serializers.Serializer[Any]):
    wait = serializers.FloatField(required=False, min_value=0, default=0.0)

    def validate_wait(self, value: float) -> float:
        return min(value, float(settings.BALANCER_MAX_WAIT_SECONDS))


class CompletionRequestSerializer(serializers.ModelSerializer[CompletionRequest]):
    """A request's record. `queue` (while it waits in a line, on the record of one request: not
    in lists): the line, its position (0: next), and when it may start."""

    usage = serializers.SerializerMethodField()
    tier = serializers.SerializerMethodField()
    client_batch = serializers.SerializerMethodField()
    cost = serializers.SerializerMethodField()
    timing = serializers.SerializerMethodField()
    queue = serializers.SerializerMethodField()
    links = serializers.SerializerMethodField()

    class Meta:
        model = CompletionRequest
        fields = [
            "id",
            "status",
            "provider",
            "model",
            "group",
            "fallback_from",
            "priority",
            "tier",
            "client_batch",
            "operation",
            "served_by",
            "response",
            "error",
            "upstream_status",
            "attempts",
            "usage",
            "cost",
            "timing",
            "queue",
            "created_at",
            "started_at",
            "finished_at",
            "links",
        ]
        read_only_fields = fields

    def get_usage(self, obj: CompletionRequest) -> dict[str, int | None]:
        return {
            "estimated_input_tokens": obj.estimated_input_tokens,
            "estimated_output_tokens": obj.estimated_output_tokens,
            "input_tokens": obj.input_tokens,
            "cached_input_tokens": obj.cached_input_tokens,
            "output_tokens": obj.output_tokens,
        }

    @extend_schema_field(
        inline_serializer(
            "RequestTier",
            fields={
                "asked": serializers.CharField(help_text="auto, realtime or flex."),
                "served": serializers.CharField(
                    allow_null=True,
                    help_text="The tier its latest attempt was sent in: standard, flex or batch (null "
                    "before its first attempt ends).",
                ),
                "batch": serializers.UUIDField(
                    allow_null=True, help_text="The provider batch it went in, if it did."
                ),
            },
        )
    )
    def get_tier(self, obj: CompletionRequest) -> dict[str, str | None]:
        batch = str(obj.provider_batch_id) if obj.provider_batch_id else None
        return {"asked": obj.tier, "served": obj.served_tier or None, "batch": batch}

    @extend_schema_field(
        inline_serializer(
            "RequestClientBatch",
            fields={
                "id": serializers.CharField(help_text="The batch's id (batch_… or msgbatch_…)."),
                "custom_id": serializers.CharField(help_text="Its line's custom_id."),
            },
            allow_null=True,
        )
    )
    def get_client_batch(self, obj: CompletionRequest) -> dict[str, str] | None:
        """The client's batch it is a line of (the Batch APIs), or null."""
        batch = obj.client_batch
        if batch is None:
            return None
        return {"id": batch_id(batch), "custom_id": obj.custom_id}

    @extend_schema_field(
        inline_serializer(
            "RequestCost",
            fields={
                "currency": serializers.CharField(help_text="Always USD."),
                "estimated": serializers.DecimalField(
                    max_digits=16,
                    decimal_places=6,
                    help_text="Its worst case at admission (its input estimate and output cap at the dearest "
                    "deployment it may go to): what its budgets reserved.",
                ),
                "actual": serializers.DecimalField(
                    max_digits=16,
                    decimal_places=6,
                    allow_null=True,
                    help_text="What it cost, from the provider's usage (null until it ends).",
                ),
                "prices": serializers.DictField(
                    child=serializers.CharField(),
                    allow_null=True,
                    help_text="Per million tokens: input, cached_input, output, as charged (null: its "
                    "deployment had no prices).",
                ),
            },
        )
    )
    def get_cost(self, obj: CompletionRequest) -> dict[str, Any]:
        unpriced = obj.cost is not None and not obj.prices and obj.attempts > 0
        return {
            "currency": "USD",
            "estimated": str(obj.estimated_cost),
            "actual": None if obj.cost is None else str(obj.cost),
            "prices": obj.prices,
            **(
                {"note": "Its deployment has no prices: it is counted as costing nothing."}
                if unpriced
                else {}
            ),
        }

    def get_timing(self, obj: CompletionRequest) -> dict[str, float | None]:
        return {"queue_seconds": obj.queue_seconds, "upstream_seconds": obj.upstream_seconds}

    @extend_schema_field(
        inline_serializer(
            "QueuePlace",
            fields={
                "line": serializers.CharField(
                    help_text="model: its model's or group's line; key: its key's own; budget: in no line "
                    "yet, waiting for its budget's next period (a batch-class request)."
                ),
                "position": serializers.IntegerField(help_text="0: next to start.", allow_null=True),
                "estimated_wait_seconds": serializers.FloatField(),
                "estimated_start": serializers.DateTimeField(),
            },
            allow_null=True,
        )
    )
    def get_queue(self, obj: CompletionRequest) -> dict[str, Any] | None:
        return completion_request_place(request=obj) if self.context.get("place") else None

    def get_links(self, obj: CompletionRequest) -> dict[str, str]:
        return {
            "self": reverse("completion-detail", kwargs={"pk": obj.id}, request=self.context.get("request"))
        }
