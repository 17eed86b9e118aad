"""Input validation and output shapes of the completions API."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers
from rest_framework.reverse import reverse

from completions.models import CompletionRequest, ServedModel
from completions.selectors import served_model_get, served_model_names


class CompletionCreateSerializer(serializers.Serializer[Any]):
    provider = serializers.CharField(max_length=64, help_text="A served provider: openai, anthropic, mock…")
    model = serializers.CharField(max_length=200, help_text="A model served by that provider.")
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

    def validate_payload(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object: the provider's request body.")
        if value.get("stream"):
            raise serializers.ValidationError(
                "Streaming is not available on /api/v1/completions; send stream=false or omit it."
            )
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        served: ServedModel | None = served_model_get(provider=attrs["provider"], model=attrs["model"])
        if served is None:
            names = ", ".join(served_model_names(self.context["api_key"])) or "none"
            raise serializers.ValidationError(
                {"model": [f"{attrs['provider']}/{attrs['model']} is not served. Served models: {names}."]}
            )
        payload_model = attrs["payload"].get("model")
        if payload_model is not None and payload_model != attrs["model"]:
            raise serializers.ValidationError(
                {"payload": [f"payload.model is {payload_model!r} but model is {attrs['model']!r}."]}
            )
        attrs["served_model"] = served
        attrs["wait"] = min(
            attrs.get("wait", settings.BALANCER_DEFAULT_WAIT_SECONDS), settings.BALANCER_MAX_WAIT_SECONDS
        )
        return attrs


class WaitQuerySerializer(serializers.Serializer[Any]):
    wait = serializers.FloatField(required=False, min_value=0, default=0.0)

    def validate_wait(self, value: float) -> float:
        return min(value, float(settings.BALANCER_MAX_WAIT_SECONDS))


class CompletionRequestSerializer(serializers.ModelSerializer[CompletionRequest]):
    usage = serializers.SerializerMethodField()
    timing = serializers.SerializerMethodField()
    links = serializers.SerializerMethodField()

    class Meta:
        model = CompletionRequest
        fields = [
            "id",
            "status",
            "provider",
            "model",
            "response",
            "error",
            "upstream_status",
            "attempts",
            "usage",
            "timing",
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
            "output_tokens": obj.output_tokens,
        }

    def get_timing(self, obj: CompletionRequest) -> dict[str, float | None]:
        return {"queue_seconds": obj.queue_seconds, "upstream_seconds": obj.upstream_seconds}

    def get_links(self, obj: CompletionRequest) -> dict[str, str]:
        return {
            "self": reverse("completion-detail", kwargs={"pk": obj.id}, request=self.context.get("request"))
        }
