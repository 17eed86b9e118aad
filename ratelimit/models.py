"""Quotas: the limits of one served model, enforced by the Redis token buckets."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


def effective_bucket(
    *, per_minute: float, burst_seconds: float, margin: float, margin_seconds: float, requests: bool
) -> tuple[float, float]:
    """(refill per second, capacity) of one bucket as the limiter runs it: `margin` of the rate
    held back and `margin_seconds` of refill taken off the capacity, which keeps at least half
    its size and room for one request. The same rule as load_cfg in ratelimit/lua/_lib.lua."""
    rate = per_minute / 60
    cap = rate * burst_seconds
    floor = cap / 2
    if requests:
        floor = max(floor, min(cap, 1.0))
    return rate * (1 - margin), max(cap - rate * margin_seconds, floor)


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
        "margin",
        "margin_seconds",
    )

    served_model = models.OneToOneField(
        "completions.ServedModel", on_delete=models.CASCADE, related_name="quota"
    )
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
    margin = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0), MaxValueValidator(0.5)],
        help_text="Fraction of every rate held back, so that requests arriving at the provider a few "
        "milliseconds apart never find its bucket short (default: BALANCER_RATE_MARGIN).",
    )
    margin_seconds = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0)],
        help_text="Seconds of refill taken off every bucket's size, for the same reason; at most half "
        "the bucket (default: BALANCER_BURST_MARGIN_SECONDS).",
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
            "margin": self.margin_in_force,
            "margin_s": self.margin_seconds_in_force,
        }

    @property
    def margin_in_force(self) -> float:
        return float(settings.BALANCER_RATE_MARGIN if self.margin is None else self.margin)

    @property
    def margin_seconds_in_force(self) -> float:
        return float(
            settings.BALANCER_BURST_MARGIN_SECONDS if self.margin_seconds is None else self.margin_seconds
        )

    def configured_sizes(self) -> dict[str, float]:
        """Bucket sizes as configured (a minute's rate times burst_seconds / 60), before margins:
        what the dashboard shows as a bucket's size."""
        return {
            name: per_minute * self.burst_seconds / 60
            for name, per_minute in (
                ("requests", self.requests_per_minute),
                ("tokens", self.tokens_per_minute),
                ("input_tokens", self.input_tokens_per_minute),
                ("output_tokens", self.output_tokens_per_minute),
            )
            if per_minute
        }

    def capacities(self) -> dict[str, float]:
        """Bucket sizes of the limited dimensions as the limiter runs them (margins applied), by
        the name of the cost they bound."""
        out = {}
        for name, per_minute in (
            ("requests", self.requests_per_minute),
            ("tokens", self.tokens_per_minute),
            ("input_tokens", self.input_tokens_per_minute),
            ("output_tokens", self.output_tokens_per_minute),
        ):
            if per_minute:
                out[name] = effective_bucket(
                    per_minute=per_minute,
                    burst_seconds=self.burst_seconds,
                    margin=self.margin_in_force,
                    margin_seconds=self.margin_seconds_in_force,
                    requests=name == "requests",
                )[1]
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
    restrict_models = models.BooleanField(
        "only the allowed models",
        default=False,
        help_text="The key may use only the models selected below (none selected: no model at all). "
        "Off: every served model.",
    )
    allowed_models = models.ManyToManyField(
        "completions.ServedModel",
        blank=True,
        help_text="With 'only the allowed models' on, the models this key may use. Deleting a model "
        "never widens a key's access: with its last model gone, the key may use none.",
    )
    fail_fast = models.BooleanField(
        default=False, help_text="Over quota, answer 429 with retry-after instead of waiting in line."
    )
    max_queued = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Requests this key may have waiting at once; past it, 429 (default: BALANCER_KEY_MAX_QUEUED).",
    )
    max_waiting = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Calls of this key each web process holds open at once — long-polls, compatible calls, "
        "streams (default: BALANCER_KEY_MAX_WAITING).",
    )
    updated_at = models.DateTimeField(auto_now=True)

    # Not a column: the allowed models' ids, loaded once with the key (api_key_get_by_raw) so that a
    # cached key never queries for them again; None until loaded.
    allowed_model_ids: frozenset[int] | None = None

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
