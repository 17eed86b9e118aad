"""Providers and served models (the registry), client API keys, and one row per completion request."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from completions.credentials import validate_base_url, validate_key_variable
from ratelimit.names import group_line, line_name


class ProviderKind(models.TextChoices):
    OPENAI = "openai", "OpenAI-compatible"
    ANTHROPIC = "anthropic", "Anthropic"
    MOCK = "mock", "Mock (no network)"


# Names reach HTTP headers (x-balancer-deployment), Redis keys and Celery queue names, URLs and
# logs: each is a safe token, whole (\A...\Z: a "$" would let a trailing newline through).
env_var_name = RegexValidator(
    r"\A[A-Z_][A-Z0-9_]*\Z",
    "The name of an environment variable (A-Z, 0-9, _), never the key itself.",
)
slug_name = RegexValidator(r"\A[a-z0-9][a-z0-9_-]*\Z", "Lower-case letters, digits, '-' and '_'.")
# A model's name, as its provider knows it or as clients send it (a group's): what providers use
# ("gpt-4o-2024-08-06", "meta-llama/Llama-3.1-8B-Instruct", "anthropic.claude-v2:1",
# "llama3:8b", "gpt-4o@2024") and nothing that means something in a header, a Redis hash tag,
# a URL or a log line: no spaces, braces, quotes, '%', '?', '#' or control characters.
model_name = RegexValidator(
    r"\A[A-Za-z0-9][A-Za-z0-9._:/@+-]*\Z",
    "A model name: letters, digits and . _ - : / @ +, beginning with a letter or a digit "
    "(no spaces, braces, quotes or control characters).",
)


class Provider(models.Model):
    """An upstream API. The key is never stored: only the name of the environment variable that
    holds it, read by the worker when it calls the provider."""

    name = models.CharField(max_length=64, unique=True, validators=[slug_name])
    kind = models.CharField(max_length=16, choices=ProviderKind.choices)
    base_url = models.URLField(
        blank=True,
        validators=[validate_base_url],
        help_text="http(s) only. Empty: the SDK's default, which honours OPENAI_BASE_URL / "
        "ANTHROPIC_BASE_URL.",
    )
    api_key_env = models.CharField(
        "API key variable",
        max_length=128,
        blank=True,
        validators=[env_var_name, validate_key_variable],
        help_text="Environment variable holding the provider key: a name ending in _API_KEY, or one "
        "listed in BALANCER_PROVIDER_KEY_VARIABLES; never one of the balancer's own settings. "
        "Empty: the SDK's own (OPENAI_API_KEY / ANTHROPIC_API_KEY).",
    )
    timeout_seconds = models.FloatField(default=600.0, help_text="Timeout of one upstream call.")
    options = models.JSONField(default=dict, blank=True, help_text="Kind-specific options (mock latency…).")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # The two fields that decide where a worker sends which secret (completions/credentials.py).
    ENDPOINT_FIELDS = ("base_url", "api_key_env")

    class Meta:
        ordering = ["name"]
        permissions = [
            ("change_provider_endpoint", "Can change a provider's base URL and API key variable"),
        ]

    def __str__(self) -> str:
        return self.name


def provider_save(provider: Provider) -> str:
    """Save `provider`; what changed in where it sends which secret, old and new values, for the
    admin log and the registry file's log line ("" when nothing did, or it is new: its creation
    is the record)."""
    before = Provider.objects.filter(pk=provider.pk).values(*Provider.ENDPOINT_FIELDS).first()
    provider.save()
    if before is None:
        return ""
    changes = [
        f"{field}: {before.get(field, '')!r} → {getattr(provider, field)!r}"
        for field in Provider.ENDPOINT_FIELDS
        if before.get(field, "") != getattr(provider, field)
    ]
    return ("Endpoint changed: " + "; ".join(changes)) if changes else ""


def validate_group_name(name: str) -> None:
    if name.startswith("key:"):
        raise ValidationError("A group name may not start with 'key:'.")


class Priority(models.TextChoices):
    """A request's class: a higher one goes first in its line (the first of a lower class moves up
    after BALANCER_PRIORITY_AGING_SECONDS, so no class is starved)."""

    INTERACTIVE = "interactive"
    DEFAULT = "default"
    BATCH = "batch"


# Priority -> the line's class rank (0 goes first).
PRIORITY_RANK = {Priority.INTERACTIVE: 0, Priority.DEFAULT: 1, Priority.BATCH: 2}


class Operation(models.TextChoices):
    """What a request asks of its provider: a chat completion (OpenAI's chat/completions or
    Anthropic's messages, by the provider's format), a response (OpenAI's Responses API) or
    embeddings (OpenAI's embeddings)."""

    CHAT = "chat"
    RESPONSES = "responses"
    EMBEDDINGS = "embeddings"


class Scheduling(models.TextChoices):
    FIFO = "fifo", "First come, first served"
    FAIR = "fair", "Weighted fair share between client keys"


class GroupPolicy(models.TextChoices):
    CAPACITY = "capacity", "Most remaining capacity (weighted)"
    ROUND_ROBIN = "round_robin", "Round-robin (weighted)"
    LATENCY = "latency", "Lowest recent latency"
    COST = "cost", "Cheapest for the request (its deployments' prices)"


class ModelGroup(models.Model):
    """A public model name (what clients send) served by one or more deployments: ServedModel
    rows of any providers, each with its own quota and weight. The group has one line, in strict
    order; its head goes to a deployment that can take it now, chosen by `policy`."""

    name = models.CharField(
        max_length=200,
        unique=True,
        validators=[model_name, validate_group_name],
        help_text="The model name clients send for it.",
    )
    policy = models.CharField(
        max_length=16,
        choices=GroupPolicy.choices,
        default=GroupPolicy.CAPACITY,
        help_text="Which deployment a request goes to when several can take it now.",
    )
    scheduling = models.CharField(
        max_length=8,
        choices=Scheduling.choices,
        default=Scheduling.FIFO,
        help_text="fifo: in arrival order. fair: capacity shared between client keys by their weights "
        "(tokens reserved), each key's requests in arrival order.",
    )
    fallback = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="fallback_for",
        help_text="Serves this group's requests when none of its deployments is healthy, or when a "
        "request's max_wait is shorter than this group's wait (one hop; empty: never).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Not a column: its enabled deployments, when loaded by completions.selectors.
    deployments_served: list[ServedModel]

    class Meta:
        ordering = ["name"]
        verbose_name = "model group"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.fallback_id is not None and self.fallback_id == self.pk:
            raise ValidationError({"fallback": "A group cannot be its own fallback."})

    @property
    def line(self) -> str:
        return group_line(self.name)

    @property
    def queue_name(self) -> str:
        return group_queue(self.name)


def group_queue(group: str) -> str:
    """The Celery queue of a model group's line (a provider's name has no ':', so no
    "llm.<provider>.<model>" begins with "llm.group:")."""
    return f"llm.group:{group}"


def wire_format(kind: str, mock_format: Any) -> str:
    """The wire format a provider of `kind` speaks: "openai" or "anthropic" (a mock speaks either,
    by its `format` option)."""
    if kind == "mock":
        return "anthropic" if mock_format == "anthropic" else "openai"
    return "anthropic" if kind == "anthropic" else "openai"


class ServedModel(models.Model):
    """A provider/model pair the balancer serves: alone (its own queue and, with a quota, its own
    line), or as a deployment of a model group (the group's line and queue)."""

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="models")
    name = models.CharField(
        max_length=200, validators=[model_name], help_text="The model name the provider knows."
    )
    enabled = models.BooleanField(default=True)
    options = models.JSONField(default=dict, blank=True, help_text="Overrides the provider's options.")
    group = models.ForeignKey(
        ModelGroup,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="deployments",
        help_text="The model group it serves as one deployment of (empty: served alone).",
    )
    weight = models.PositiveIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(1000)],
        help_text="Its share in its group: preferred this many times over a deployment of weight 1.",
    )
    draining = models.BooleanField(
        default=False,
        editable=False,
        help_text="Disabled while requests waited for it: its queue stays consumed and its line watched "
        "until the last of them has ended (the tend then clears this).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Not columns: its group and whether it was enabled when it was loaded, so that a group it
    # leaves learns it, and a model being disabled starts draining.
    group_before: int | None = None
    enabled_before: bool = False

    class Meta:
        ordering = ["provider__name", "name"]
        constraints = [models.UniqueConstraint(fields=["provider", "name"], name="unique_served_model")]

    def __str__(self) -> str:
        return f"{self.provider.name}/{self.name}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        # However it is disabled (the admin, its inlines, the registry file, a shell), requests
        # already waiting for it are served: it drains (completions.maintenance clears the flag).
        if not self.enabled and self.enabled_before:
            self.draining = True
        elif self.enabled:
            self.draining = False
        super().save(*args, **kwargs)
        self.enabled_before = self.enabled

    @classmethod
    def from_db(cls, db: str | None, field_names: Any, values: Any) -> ServedModel:
        instance = super().from_db(db, field_names, values)
        instance.group_before = instance.__dict__.get("group_id")
        instance.enabled_before = bool(instance.__dict__.get("enabled"))
        return instance

    @property
    def wire_format(self) -> str:
        """The format it is called in: "openai" or "anthropic"."""
        return wire_format(self.provider.kind, {**self.provider.options, **self.options}.get("format"))

    @property
    def queue_name(self) -> str:
        """Its own queue: requests sent to it alone (those sent to its group use the group's)."""
        return queue_name(self.provider.name, self.name)


# Prices are US dollars per million tokens; above this, a price is surely a typo (the dearest
# model sold today costs $600 per million output tokens).
PRICE_MAX = Decimal("1000")


def price_field(what: str) -> models.DecimalField[Decimal, Decimal]:
    return models.DecimalField(
        max_digits=12,
        decimal_places=6,
        validators=[
            MinValueValidator(Decimal(0), message="A price cannot be negative."),
            MaxValueValidator(
                PRICE_MAX,
                message=f"Prices are US dollars per million tokens: more than {PRICE_MAX} is surely a typo.",
            ),
        ],
        help_text=f"US dollars per million {what} tokens.",
    )


class Tier(models.TextChoices):
    """How a provider sells a call: as it comes, or cheaper for work that can wait."""

    STANDARD = "standard"
    FLEX = "flex"
    BATCH = "batch"


class TierAsked(models.TextChoices):
    """The tier a request asks for: `auto` lets the balancer pick the cheapest that meets its
    deadline (completions.tiers); the others pin it."""

    AUTO = "auto"
    REALTIME = "realtime"
    FLEX = "flex"
    BATCH = "batch"


class DeploymentPrice(models.Model):
    """What one deployment costs, per tier its provider sells it in. A deployment without a
    standard price costs nothing (its requests' cost is 0, and says it was unpriced)."""

    served_model = models.ForeignKey(ServedModel, on_delete=models.CASCADE, related_name="prices")
    tier = models.CharField(max_length=16, choices=Tier.choices, default=Tier.STANDARD)
    input = price_field("input")
    cached_input = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        validators=price_field("").validators,
        help_text="US dollars per million cached input tokens (empty: the input price).",
    )
    output = price_field("output")
    enqueued_tokens = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Batch tier: the provider's limit on tokens enqueued in its batches at once for this "
        "model (each request's input estimate plus its output cap; empty: none).",
    )
    turnaround_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(86400)],
        help_text="Batch tier: how long the balancer expects a batch to take (empty: "
        "BALANCER_BATCH_TURNAROUND_SECONDS). A request goes in one only if its deadline leaves this "
        "plus BALANCER_BATCH_RESERVE_SECONDS.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["served_model", "tier"]
        constraints = [
            models.UniqueConstraint(fields=["served_model", "tier"], name="unique_deployment_price")
        ]

    def __str__(self) -> str:
        return f"{self.served_model} {self.tier}: in {self.input}, out {self.output} per 1M tokens"

    def clean(self) -> None:
        if self.tier == Tier.FLEX and self.served_model_id and self.served_model.wire_format != "openai":
            raise ValidationError(
                {
                    "tier": "Flex processing is OpenAI's: a deployment in the Anthropic format has no flex tier."
                }
            )
        if self.tier != Tier.BATCH and (
            self.enqueued_tokens is not None or self.turnaround_seconds is not None
        ):
            raise ValidationError("enqueued_tokens and turnaround_seconds belong to the batch tier only.")


def queue_name(provider: str, model: str) -> str:
    """The Celery queue of one provider/model pair."""
    return f"llm.{provider}.{model}"


class ApiKey(models.Model):
    """A client of the balancer. Only a SHA-256 of the key is stored; the key is shown once."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, db_index=True, help_text="First characters, to recognise a key.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    is_active = models.BooleanField(default=True)
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="balancer_key",
        help_text="Set for the key a staff user acts with in the browsable API.",
    )
    weight = models.PositiveIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(1000)],
        help_text="Its share of a fair group's capacity, against other keys' weights.",
    )
    max_priority = models.CharField(
        "highest priority",
        max_length=16,
        choices=Priority.choices,
        default=Priority.DEFAULT,
        help_text="The highest class its requests may ask for.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    # Not a column: the raw key, only on the object that has just created it, for the one page
    # that shows it (completions.admin); never stored.
    raw_key: str | None = None

    class Meta:
        ordering = ["name"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class BudgetPeriod(models.TextChoices):
    DAILY = "daily"
    MONTHLY = "monthly"
    HOURS = "hours"


class WhenSpent(models.TextChoices):
    REFUSE = "refuse", "Refuse every request over it (429 budget_exceeded)"
    QUEUE_BATCH = "queue_batch", "Queue batch-class requests until the period resets (refuse the rest)"


class Budget(models.Model):
    """What a client key, or everything sent to a model group, may spend per period (UTC: a day
    from midnight, a month from its first, or a number of hours counted from 1970). Admission
    reserves each request's worst case in the same Redis step that checks the budget, and
    settlement gives back what it did not use (completions.spend), so concurrent requests can
    never spend past `limit` together."""

    api_key = models.OneToOneField(
        ApiKey, null=True, blank=True, on_delete=models.CASCADE, related_name="budget"
    )
    group = models.OneToOneField(
        ModelGroup, null=True, blank=True, on_delete=models.CASCADE, related_name="budget"
    )
    period = models.CharField(max_length=16, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTHLY)
    hours = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(24 * 366)],
        help_text="The period's length when it is counted in hours.",
    )
    limit = models.DecimalField(
        max_digits=14,
        decimal_places=2,
        validators=[MinValueValidator(Decimal(0), message="A budget cannot be negative.")],
        help_text="US dollars: the hard maximum per period. A request whose worst case does not fit "
        "what is left is refused (429 budget_exceeded) until the period resets.",
    )
    warn_at = models.DecimalField(
        "soft threshold",
        max_digits=14,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0))],
        help_text="US dollars: past this a warning is logged and the key is marked on the dashboard.",
    )
    when_spent = models.CharField(
        "over budget",
        max_length=16,
        choices=WhenSpent.choices,
        default=WhenSpent.REFUSE,
        help_text="What a request its budget cannot take gets. A batch-class request may instead wait for the "
        "next period, in its own place, when its max_wait (none: any) reaches past the reset.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(api_key__isnull=False, group__isnull=True)
                | models.Q(api_key__isnull=True, group__isnull=False),
                name="budget_of_a_key_or_a_group",
            ),
            models.CheckConstraint(
                condition=~models.Q(period="hours") | models.Q(hours__isnull=False),
                name="budget_hours_given",
            ),
        ]

    def __str__(self) -> str:
        owner = f"key {self.api_key}" if self.api_key_id else f"group {self.group}"
        return f"{owner}: ${self.limit} {self.period_label}"

    @property
    def period_label(self) -> str:
        return f"every {self.hours} h" if self.period == BudgetPeriod.HOURS else self.period

    def clean(self) -> None:
        if (self.api_key_id is None) == (self.group_id is None):
            raise ValidationError("A budget belongs to a client key or to a model group, not both.")
        if self.period == BudgetPeriod.HOURS and not self.hours:
            raise ValidationError({"hours": "A budget counted in hours needs the number of hours."})
        if self.warn_at is not None and self.warn_at > self.limit:
            raise ValidationError({"warn_at": "The soft threshold is below the hard maximum."})


class BatchState(models.TextChoices):
    """Where a provider batch stands, as the balancer drives it (completions.batching)."""

    SUBMITTING = "submitting"
    OPEN = "open", "Open (the provider is processing it)"
    CANCELLING = "cancelling", "Cancelling (its deadline is near: what it did not finish runs realtime)"
    ENDED = "ended"
    FAILED = "failed", "Failed (its items run realtime)"


class ProviderBatch(models.Model):
    """One batch job at a provider (OpenAI's Batch API, Anthropic's Message Batches): requests of
    one deployment collected and sent together at the batch tier's prices. It owns its items
    (CompletionRequest.provider_batch, running) until their results are recorded or they are
    sent on realtime; its `claim` fences their rows as an attempt's token does."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    served_model = models.ForeignKey(
        ServedModel, null=True, on_delete=models.SET_NULL, related_name="provider_batches"
    )
    provider = models.CharField(max_length=64)
    model = models.CharField(max_length=200)
    upstream_id = models.CharField(
        max_length=200, blank=True, default="", help_text="The provider's batch id."
    )
    state = models.CharField(max_length=16, choices=BatchState.choices, default=BatchState.SUBMITTING)
    upstream_status = models.CharField(max_length=32, blank=True, default="")
    claim = models.CharField(max_length=32, editable=False)
    items = models.PositiveIntegerField(default=0)
    enqueued_tokens = models.PositiveBigIntegerField(default=0)
    deadline = models.DateTimeField(
        null=True, blank=True, help_text="Its earliest item's deadline (empty: none has one)."
    )
    prices = models.JSONField(null=True, blank=True, help_text="Batch and standard prices at submission.")
    succeeded = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    rerun = models.PositiveIntegerField(default=0, help_text="Items it did not finish, sent on realtime.")
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "provider batch"
        verbose_name_plural = "provider batches"
        indexes = [models.Index(fields=["state"], name="provider_batch_state")]

    def __str__(self) -> str:
        return f"{self.provider}/{self.model} batch {str(self.id)[:8]} ({self.state}, {self.items} items)"


class BatchFile(models.Model):
    """A file of the OpenAI-compatible Files API (completions.client_batches): a batch's input,
    uploaded by its key, or the output or errors the balancer wrote for it. A key sees its own."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    api_key = models.ForeignKey("ApiKey", on_delete=models.CASCADE, related_name="batch_files")
    purpose = models.CharField(max_length=16, help_text="batch (an input) or batch_output.")
    filename = models.CharField(max_length=255, blank=True, default="")
    content = models.BinaryField()
    size = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.filename or self.id} ({self.purpose}, {self.size} bytes)"


class ClientBatch(models.Model):
    """A batch a client sent through the OpenAI Batch API or Anthropic's Message Batches: its
    lines are requests of the batch class (CompletionRequest.client_batch) whose deadline is its
    completion window; each goes the cheapest way that fits (completions.tiers, batching)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    api_key = models.ForeignKey("ApiKey", on_delete=models.CASCADE, related_name="client_batches")
    kind = models.CharField(max_length=16, help_text="openai or anthropic: the API it came through.")
    endpoint = models.CharField(max_length=64, blank=True, default="")
    window_seconds = models.PositiveIntegerField(default=86400)
    input_file = models.ForeignKey(
        BatchFile, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    output_file = models.ForeignKey(
        BatchFile, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    error_file = models.ForeignKey(
        BatchFile, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    metadata = models.JSONField(null=True, blank=True)
    total = models.PositiveIntegerField(default=0)
    refused = models.JSONField(
        default=list, blank=True, help_text="Lines refused when it was created (custom_id, status, message)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "client batches"

    def __str__(self) -> str:
        return f"{self.kind} batch {str(self.id)[:8]} ({self.total} requests)"


class CompletionStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


TERMINAL_STATUSES = frozenset(
    {
        CompletionStatus.SUCCEEDED,
        CompletionStatus.FAILED,
        CompletionStatus.CANCELLED,
        CompletionStatus.EXPIRED,
    }
)


class CompletionRequest(models.Model):
    """One request from a client to one served model, from submission to its terminal state.

    created_at → started_at is the time spent waiting in line; started_at → finished_at the time
    spent upstream (across attempts).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    api_key = models.ForeignKey(ApiKey, on_delete=models.PROTECT, related_name="requests")
    provider = models.CharField(max_length=64, help_text="Of the deployment of its latest attempt.")
    model = models.CharField(max_length=200, help_text="The upstream model of its latest attempt.")
    group = models.CharField(
        max_length=200, blank=True, default="", help_text="The model group it was sent to ('': none)."
    )
    deployments = models.CharField(
        max_length=1000,
        blank=True,
        default="",
        help_text="In a group: the deployments it may go to, ids joined by '|' ('': any).",
    )
    served_by = models.JSONField(
        default=list,
        blank=True,
        help_text="In a group: the deployment and upstream model of each attempt.",
    )
    fallback_from = models.CharField(
        max_length=200,
        blank=True,
        default="",
        help_text="The group it was sent to, when that group's fallback serves it instead.",
    )
    priority = models.CharField(max_length=16, choices=Priority.choices, default=Priority.DEFAULT)
    tier = models.CharField(
        max_length=16,
        choices=TierAsked.choices,
        default=TierAsked.AUTO,
        help_text="The tier it asked for (auto: the cheapest its deadline allows).",
    )
    served_tier = models.CharField(
        max_length=16,
        choices=Tier.choices,
        blank=True,
        default="",
        help_text="The tier its latest attempt was sent in (empty before its first ends; batch: in a "
        "provider batch now, or served by one).",
    )
    provider_batch = models.ForeignKey(
        ProviderBatch,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="requests",
        help_text="The provider batch it went in, if it did.",
    )
    client_batch = models.ForeignKey(
        ClientBatch,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="requests",
        help_text="The client's batch it is a line of, if it is.",
    )
    custom_id = models.CharField(max_length=64, blank=True, default="", help_text="Its line's custom_id.")
    operation = models.CharField(max_length=16, choices=Operation.choices, default=Operation.CHAT)
    payload = models.JSONField()
    status = models.CharField(
        max_length=16, choices=CompletionStatus.choices, default=CompletionStatus.QUEUED
    )
    response = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    upstream_status = models.PositiveSmallIntegerField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    estimated_input_tokens = models.PositiveIntegerField(default=0)
    estimated_output_tokens = models.PositiveIntegerField(default=0)
    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    cached_input_tokens = models.PositiveIntegerField(
        null=True, blank=True, help_text="Of its input tokens, those the provider read from its cache."
    )
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    estimated_cost = models.DecimalField(
        max_digits=16,
        decimal_places=6,
        default=Decimal(0),
        help_text="US dollars: its worst case at admission (input estimate, output cap), reserved "
        "from its budgets.",
    )
    cost = models.DecimalField(
        max_digits=16,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="US dollars: what it cost, from the usage the provider reported, at `prices`.",
    )
    prices = models.JSONField(
        null=True,
        blank=True,
        help_text="The prices it was charged at (per million tokens: input, cached_input, output), "
        "as they were when its attempt started; empty: its deployment had none.",
    )
    budgets = models.CharField(
        max_length=200,
        blank=True,
        default="",
        help_text="The budget periods its worst case was reserved in, settled when it ends.",
    )
    budget_wait_until = models.DateTimeField(
        null=True,
        blank=True,
        help_text="A batch-class request its budget could not take: it waits, in no line, for this "
        "reset of the budget's period.",
    )
    stream = models.BooleanField(default=False, help_text="Streamed to the client as server-sent events.")
    key_limited = models.BooleanField(default=False, help_text="Counted against its client key's quota.")
    rate_limited = models.BooleanField(
        default=False, help_text="Its model had a quota at submission: it waits its turn in the model's line."
    )
    max_wait = models.FloatField(
        null=True, blank=True, help_text="Seconds it may wait in line before it expires."
    )
    reply_to = models.CharField(
        max_length=80,
        blank=True,
        default="",
        help_text="Redis channel of the web process waiting for it (its worker sends the result there).",
    )
    undelivered = models.BooleanField(
        default=False,
        help_text="Accepted while Redis was unreachable: waiting for the outbox to put it in line.",
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True, help_text="When the current attempt started.")
    claim = models.CharField(
        max_length=32,
        blank=True,
        default="",
        help_text="The current attempt's fencing token: its writes and settlements carry it, and a "
        "stale attempt's (one that lost its lease and was run again) are refused.",
    )
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["api_key", "-created_at"], name="request_client_recent"),
            models.Index(fields=["status", "created_at"], name="request_status_age"),
            models.Index(fields=["provider", "model", "-created_at"], name="request_model_recent"),
            # A key's waiting requests, counted at every submission against its cap.
            models.Index(fields=["api_key"], name="request_key_queued", condition=models.Q(status="queued")),
            # The groups queued requests wait for, one seek each (selectors.queued_group_names).
            # Not partial: SQLite's planner (no statistics) took request_status_age over a
            # partial index on group and sorted every queued row.
            models.Index(fields=["status", "group"], name="request_status_group"),
            # Batch-class requests waiting for their budget's next period.
            models.Index(
                fields=["budget_wait_until"],
                name="request_budget_wait",
                condition=models.Q(budget_wait_until__isnull=False),
            ),
            # The outbox: only the few rows accepted while Redis was down are in it.
            models.Index(
                fields=["created_at"], name="request_undelivered", condition=models.Q(undelivered=True)
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.provider}/{self.model} {self.status}"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def queue_name(self) -> str:
        return group_queue(self.group) if self.group else queue_name(self.provider, self.model)

    @property
    def line(self) -> str | None:
        """The rate-limit line it waits in: its group's, else its model's, or None when its model
        was unlimited at submission."""
        if self.group:
            return group_line(self.group)
        return line_name(self.provider, self.model) if self.rate_limited else None

    @property
    def deployment_ids(self) -> list[str] | None:
        """The deployments of its group it may go to (None: any)."""
        return self.deployments.split("|") if self.deployments else None

    @property
    def queue_seconds(self) -> float | None:
        end = self.started_at or self.finished_at
        return (end - self.created_at).total_seconds() if end else None

    @property
    def upstream_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None
