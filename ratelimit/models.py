"""Quotas: the limits of one served model, enforced by the Redis token buckets."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models

from completions.models import ServedModel


class Quota(models.Model):
    """Per-model limits. Empty fields are unlimited; a model without a quota is unlimited.

    Every bucket holds `burst_seconds` worth of its rate (60: one minute's worth, the providers'
    own convention) and refills continuously.
    """

    # The limit fields, as the registry file, the admin and /api/v1/queues name them.
    LIMIT_FIELDS = (
        "requests_per_minute",
        "tokens_per_minute",
        "input_tokens_per_minute",
        "output_tokens_per_minute",
        "max_concurrency",
        "burst_seconds",
        "default_output_tokens",
    )

    served_model = models.OneToOneField(ServedModel, on_delete=models.CASCADE, related_name="quota")
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True, help_text="Input + output tokens.")
    input_tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    output_tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    max_concurrency = models.PositiveIntegerField(
        null=True, blank=True, help_text="Upstream calls in flight at once."
    )
    burst_seconds = models.FloatField(
        default=60.0,
        validators=[MinValueValidator(0.001)],
        help_text="Bucket size, in seconds of refill (60 = one minute's worth).",
    )
    default_output_tokens = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Output tokens reserved for requests that name no cap (default: BALANCER_DEFAULT_OUTPUT_TOKENS).",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["served_model__provider__name", "served_model__name"]

    def __str__(self) -> str:
        return f"quota of {self.served_model}"

    def clean(self) -> None:
        rpm = self.requests_per_minute
        if rpm and rpm * self.burst_seconds / 60 < 1:
            raise ValidationError(
                {
                    "burst_seconds": f"With {rpm} requests per minute the bucket must hold at least one request: "
                    f"burst_seconds ≥ {60 / rpm:g}."
                }
            )

    def limits(self) -> dict[str, Any]:
        """The quota as the Lua scripts read it (see ratelimit/lua/_lib.lua)."""
        return {
            "rpm": self.requests_per_minute,
            "tpm": self.tokens_per_minute,
            "itpm": self.input_tokens_per_minute,
            "otpm": self.output_tokens_per_minute,
            "conc": self.max_concurrency,
            "burst": self.burst_seconds,
        }

    def capacities(self) -> dict[str, float]:
        """Bucket sizes of the limited dimensions, by the name of the cost they bound."""
        scale = self.burst_seconds / 60
        out = {}
        for name, per_minute in (
            ("requests", self.requests_per_minute),
            ("tokens", self.tokens_per_minute),
            ("input_tokens", self.input_tokens_per_minute),
            ("output_tokens", self.output_tokens_per_minute),
        ):
            if per_minute:
                out[name] = per_minute * scale
        return out


class KeyQuota(models.Model):
    """Per-client limits: requests and tokens per minute over all models, and which models the key
    may use. Over its rate a request waits its turn (the key's own line, in front of the models'
    lines), or, with `fail_fast`, is refused with 429 and retry-after."""

    api_key = models.OneToOneField("completions.ApiKey", on_delete=models.CASCADE, related_name="quota")
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True, help_text="Input + output tokens.")
    burst_seconds = models.FloatField(
        default=60.0,
        validators=[MinValueValidator(0.001)],
        help_text="Bucket size, in seconds of refill (60 = one minute's worth).",
    )
    allowed_models = models.ManyToManyField(
        ServedModel, blank=True, help_text="Models this key may use; none selected: every served model."
    )
    fail_fast = models.BooleanField(
        default=False, help_text="Over quota, answer 429 with retry-after instead of waiting in line."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "key quota"

    def __str__(self) -> str:
        return f"quota of {self.api_key}"

    def clean(self) -> None:
        rpm = self.requests_per_minute
        if rpm and rpm * self.burst_seconds / 60 < 1:
            raise ValidationError(
                {"burst_seconds": f"The bucket must hold at least one request: ≥ {60 / rpm:g}."}
            )

    @property
    def limited(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute)

    def limits(self) -> dict[str, Any]:
        return {"rpm": self.requests_per_minute, "tpm": self.tokens_per_minute, "burst": self.burst_seconds}

    def capacities(self) -> dict[str, float]:
        scale = self.burst_seconds / 60
        out = {}
        if self.requests_per_minute:
            out["requests"] = self.requests_per_minute * scale
        if self.tokens_per_minute:
            out["tokens"] = self.tokens_per_minute * scale
        return out
