"""The model registry declared in a file (BALANCER_CONFIG): YAML or JSON, applied at start-up and
by `manage.py apply_config`.

    providers:
      - name: openai                # what clients send as "provider"
        kind: openai                # openai | anthropic | mock
        base_url: ""                # empty: the SDK default (honours OPENAI_BASE_URL)
        api_key_env: OPENAI_API_KEY # the variable holding the key; the key is never in this file
        timeout_seconds: 600
        options: {}
        models:
          - gpt-4o-mini                       # no quota: unlimited
          - name: gpt-4.1
            quota: {requests_per_minute: 500, tokens_per_minute: 30000, max_concurrency: 50}
          - name: gpt-4o
            group: gpt-4o             # a deployment of the model group gpt-4o (see below)
            weight: 2                 # preferred twice as much as a deployment of weight 1
            quota: {requests_per_minute: 500}
            prices:                   # US dollars per million tokens (none: it costs nothing)
              input: "2.50"
              cached_input: "1.25"    # optional: the input price
              output: "10.00"
              batch: {input: "1.25", output: "5.00"}  # optional: the cheaper tiers (flex, batch)
    groups:                         # optional: a group named by a model exists without this
      - name: gpt-4o                # what clients send as "model"
        policy: capacity            # capacity | round_robin | latency | cost
        fallback: gpt-4o-mini       # another group serving its requests when it cannot (or null)
        scheduling: fair            # fifo (default) | fair: shared between client keys by weight
        budget: {limit: "500.00", period: monthly}  # what all its requests may spend (or null)
    keys:                           # optional: settings of existing client keys, by name
      - name: nightly-batch         # every key of that name (keys are created by create_api_key)
        weight: 1                   # its share in a fair group against other keys' weights
        max_priority: batch         # the highest class it may ask for: interactive | default | batch
        budget:                     # what it may spend per period (or null: no budget)
          limit: "20.00"            # US dollars, the hard maximum
          period: daily             # daily | monthly | hours (then `hours: N`), UTC
          warn_at: "15.00"          # optional: a warning past this
          when_spent: queue_batch   # refuse (default) | queue_batch: batch-class requests wait
                                    # for the next period when their max_wait reaches past it

Applying creates or updates what the file names and leaves everything else alone, so edits made
in the admin to other entries survive. To stop serving a model, set `enabled: false`: the
requests already waiting for it are still served (it drains: its queue stays consumed and its
line watched until the last has ended), unless the entry also says `waiting: cancel` (they end
cancelled, with the reason; `waiting: drain` is the default). To remove a model's quota,
`quota: null`. A quota the file names replaces the model's quota as a whole; so do `prices` and
`budget` (null removes them). Money is written as strings or numbers and read as decimals.
A model names its group with `group:` (`group: null` takes it out of one); a group is created
when the first model names it, with the default policy unless `groups:` says otherwise.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml
from django.core.exceptions import ValidationError
from django.db import transaction

from completions.models import (
    ApiKey,
    Budget,
    BudgetPeriod,
    DeploymentPrice,
    ModelGroup,
    Provider,
    ProviderKind,
    ServedModel,
    Tier,
    WhenSpent,
    provider_save,
)

logger = logging.getLogger(__name__)

PROVIDER_FIELDS = {"name", "kind", "base_url", "api_key_env", "timeout_seconds", "options", "models"}
MODEL_FIELDS = {"name", "enabled", "options", "quota", "group", "weight", "waiting", "prices"}
GROUP_FIELDS = {"name", "policy", "fallback", "scheduling", "budget"}
KEY_FIELDS = {"name", "weight", "max_priority", "budget"}
PRICE_FIELDS = {"input", "cached_input", "output"}
# The batch tier's own limits, beside its prices (DeploymentPrice).
BATCH_FIELDS = {"enqueued_tokens", "turnaround_seconds"}
BUDGET_FIELDS = {"limit", "period", "hours", "warn_at", "when_spent"}


class ConfigError(Exception):
    pass


@dataclass
class ApplySummary:
    providers: int
    models: int
    groups: int = 0

    def __str__(self) -> str:
        return f"{self.providers} provider(s), {self.models} model(s), {self.groups} group(s) applied"


def config_load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with a 'providers' list")
    return data


def _check_keys(where: str, item: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(item) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")


def _models(where: str, raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{where}.models must be a list")
    out = []
    for i, entry in enumerate(raw):
        spec = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise ConfigError(f"{where}.models[{i}] must be a model name or a mapping with 'name'")
        _check_keys(f"{where}.models[{i}]", spec, MODEL_FIELDS)
        out.append(spec)
    return out


def config_apply(data: dict[str, Any]) -> ApplySummary:
    """Create or update every provider and model the configuration names, all or nothing."""
    providers = data.get("providers")
    if not isinstance(providers, list):
        raise ConfigError("'providers' must be a list")
    _check_keys("config", data, {"providers", "groups", "keys"})
    n_models = 0
    with transaction.atomic():
        groups = _apply_groups(data.get("groups"))
        for i, spec in enumerate(providers):
            where = f"providers[{i}]"
            if not isinstance(spec, dict):
                raise ConfigError(f"{where} must be a mapping")
            _check_keys(where, spec, PROVIDER_FIELDS)
            name = spec.get("name")
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{where}.name must be a non-empty string")
            kind = spec.get("kind")
            if kind not in ProviderKind.values:
                raise ConfigError(f"{where}.kind must be one of {', '.join(ProviderKind.values)}")
            provider = Provider.objects.filter(name=name).first() or Provider(name=name)
            provider.kind = kind
            for field in ("base_url", "api_key_env", "timeout_seconds", "options"):
                if field in spec:
                    setattr(provider, field, spec[field] if spec[field] is not None else "")
            try:
                provider.full_clean()
            except ValidationError as exc:
                raise ConfigError(f"{where} ({name}): {_messages(exc)}") from None
            moved = provider_save(provider)
            if moved:
                logger.warning("registry file: provider %s: %s", name, moved)
            for spec_m in _models(where, spec.get("models")):
                model = ServedModel.objects.filter(
                    provider=provider, name=spec_m["name"]
                ).first() or ServedModel(provider=provider, name=spec_m["name"])
                was_enabled = model.pk is not None and model.enabled
                model.enabled = bool(spec_m.get("enabled", True))
                waiting = spec_m.get("waiting", "drain")
                if waiting not in ("drain", "cancel"):
                    raise ConfigError(
                        f"{where}.models ({spec_m['name']}).waiting must be drain or cancel, not {waiting!r}"
                    )
                if was_enabled and not model.enabled and waiting == "cancel":
                    _cancel_waiting_after_commit(name, spec_m["name"])
                if "options" in spec_m:
                    model.options = spec_m["options"] or {}
                if "weight" in spec_m:
                    model.weight = spec_m["weight"]
                if "group" in spec_m:
                    model.group = _group(f"{where}.models ({spec_m['name']}).group", spec_m["group"], groups)
                try:
                    model.full_clean()
                except ValidationError as exc:
                    raise ConfigError(f"{where}.models ({spec_m['name']}): {_messages(exc)}") from None
                model.save()
                if "quota" in spec_m:
                    _apply_quota(f"{where}.models ({spec_m['name']}).quota", model, spec_m["quota"])
                if "prices" in spec_m:
                    _apply_prices(f"{where}.models ({spec_m['name']}).prices", model, spec_m["prices"])
                n_models += 1
        _apply_fallbacks(data.get("groups"), groups)
        _apply_keys(data.get("keys"))
    return ApplySummary(providers=len(providers), models=n_models, groups=len(groups))


def _cancel_waiting_after_commit(provider: str, model: str) -> None:
    def cancel() -> None:
        from completions.services import served_model_waiting_cancel

        reason = f"Cancelled: {provider}/{model} was disabled (registry file)."
        served_model_waiting_cancel(provider=provider, model=model, reason=reason)

    transaction.on_commit(cancel)


def _apply_groups(raw: Any) -> dict[str, ModelGroup]:
    """Create or update the groups the file declares; returns them by name."""
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise ConfigError("'groups' must be a list")
    out = {}
    for i, spec in enumerate(raw):
        where = f"groups[{i}]"
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise ConfigError(f"{where} must be a mapping with 'name'")
        _check_keys(where, spec, GROUP_FIELDS)
        group = ModelGroup.objects.filter(name=spec["name"]).first() or ModelGroup(name=spec["name"])
        for field in ("policy", "scheduling"):
            if field in spec:
                setattr(group, field, spec[field])
        _save(f"{where} ({spec['name']})", group)
        if "budget" in spec:
            _apply_budget(f"{where} ({spec['name']}).budget", spec["budget"], group=group)
        out[group.name] = group
    return out


def _apply_fallbacks(raw: Any, groups: dict[str, ModelGroup]) -> None:
    """Each group's `fallback` (once every group the file names exists)."""
    for i, spec in enumerate(raw or []):
        if "fallback" not in spec:
            continue
        where = f"groups[{i}] ({spec['name']}).fallback"
        name = spec["fallback"]
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"{where} must be a group name or null")
        fallback = None
        if name is not None:
            fallback = groups.get(name) or ModelGroup.objects.filter(name=name).first()
            if fallback is None:
                raise ConfigError(f"{where}: no group is named {name!r}")
        group = groups[spec["name"]]
        group.fallback = fallback
        _save(where, group)


def _apply_keys(raw: Any) -> None:
    """The weight and highest priority of the client keys the file names (every key of a name)."""
    if raw is None:
        return
    if not isinstance(raw, list):
        raise ConfigError("'keys' must be a list")
    for i, spec in enumerate(raw):
        where = f"keys[{i}]"
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise ConfigError(f"{where} must be a mapping with 'name'")
        _check_keys(where, spec, KEY_FIELDS)
        keys = list(ApiKey.objects.filter(name=spec["name"]))
        if not keys:
            raise ConfigError(
                f"{where}: no API key is named {spec['name']!r} (create it with create_api_key)"
            )
        for key in keys:
            for field in ("weight", "max_priority"):
                if field in spec:
                    setattr(key, field, spec[field])
            try:
                key.full_clean(exclude=["key_hash"])
            except ValidationError as exc:
                raise ConfigError(f"{where} ({spec['name']}): {_messages(exc)}") from None
            key.save(update_fields=["weight", "max_priority"])
            if "budget" in spec:
                _apply_budget(f"{where} ({spec['name']}).budget", spec["budget"], api_key=key)


def _group(where: str, name: Any, groups: dict[str, ModelGroup]) -> ModelGroup | None:
    """The group a model names (created when new); None for `group: null`."""
    if name is None:
        return None
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where} must be a group name or null")
    if name not in groups:
        group = ModelGroup.objects.filter(name=name).first() or ModelGroup(name=name)
        if group.pk is None:
            _save(where, group)
        groups[name] = group
    return groups[name]


def _save(where: str, obj: ModelGroup) -> None:
    try:
        obj.full_clean()
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_messages(exc)}") from None
    obj.save()


def _apply_quota(where: str, model: ServedModel, spec: Any) -> None:
    from ratelimit.models import Quota

    if spec is None:
        Quota.objects.filter(served_model=model).delete()
        return
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a mapping or null")
    _check_keys(where, spec, set(Quota.LIMIT_FIELDS))
    quota = Quota.objects.filter(served_model=model).first() or Quota(served_model=model)
    for field in Quota.LIMIT_FIELDS:
        default = 60.0 if field == "burst_seconds" else None
        setattr(quota, field, spec.get(field, default))
    try:
        quota.full_clean()
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_messages(exc)}") from None
    quota.save()


def _money(where: str, value: Any) -> Decimal:
    """A sum of money as written in the file: a string or a number, read as a decimal."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where} must be a number (US dollars), not {value!r}")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ConfigError(f"{where} must be a number (US dollars), not {value!r}") from None
    if not amount.is_finite():
        raise ConfigError(f"{where} must be a finite number, not {value!r}")
    return amount


def _apply_prices(where: str, model: ServedModel, spec: Any) -> None:
    """A model's prices: the standard tier's at the top, the others' under their names."""
    if spec is None:
        DeploymentPrice.objects.filter(served_model=model).delete()
        return
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a mapping or null")
    _check_keys(where, spec, PRICE_FIELDS | {Tier.FLEX, Tier.BATCH})
    tiers = {Tier.STANDARD: {k: v for k, v in spec.items() if k in PRICE_FIELDS}}
    for tier in (Tier.FLEX, Tier.BATCH):
        if spec.get(tier) is not None:
            if not isinstance(spec[tier], dict):
                raise ConfigError(f"{where}.{tier} must be a mapping")
            _check_keys(
                f"{where}.{tier}", spec[tier], PRICE_FIELDS | (BATCH_FIELDS if tier == Tier.BATCH else set())
            )
            tiers[tier] = spec[tier]
    DeploymentPrice.objects.filter(served_model=model).exclude(tier__in=list(tiers)).delete()
    for tier, fields in tiers.items():
        at = where if tier == Tier.STANDARD else f"{where}.{tier}"
        missing = {"input", "output"} - set(fields)
        if missing:
            raise ConfigError(f"{at} needs {' and '.join(sorted(missing))}")
        price = DeploymentPrice.objects.filter(served_model=model, tier=tier).first() or DeploymentPrice(
            served_model=model, tier=tier
        )
        price.input = _money(f"{at}.input", fields["input"])
        price.output = _money(f"{at}.output", fields["output"])
        cached = fields.get("cached_input")
        price.cached_input = None if cached is None else _money(f"{at}.cached_input", cached)
        for name in BATCH_FIELDS:
            value = fields.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{at}.{name} must be a whole number, not {value!r}")
            setattr(price, name, value)
        try:
            price.full_clean()
        except ValidationError as exc:
            raise ConfigError(f"{at}: {_messages(exc)}") from None
        price.save()


def _apply_budget(where: str, spec: Any, **owner: Any) -> None:
    """A key's or a group's budget (`owner`: api_key= or group=)."""
    if spec is None:
        Budget.objects.filter(**owner).delete()
        return
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a mapping or null")
    _check_keys(where, spec, BUDGET_FIELDS)
    if "limit" not in spec:
        raise ConfigError(f"{where}.limit is required (US dollars per period)")
    budget = Budget.objects.filter(**owner).first() or Budget(**owner)
    budget.limit = _money(f"{where}.limit", spec["limit"])
    budget.period = spec.get("period", BudgetPeriod.MONTHLY)
    budget.hours = spec.get("hours")
    warn_at = spec.get("warn_at")
    budget.warn_at = None if warn_at is None else _money(f"{where}.warn_at", warn_at)
    budget.when_spent = spec.get("when_spent", WhenSpent.REFUSE)
    try:
        budget.full_clean()
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_messages(exc)}") from None
    budget.save()


def _messages(exc: ValidationError) -> str:
    if hasattr(exc, "message_dict"):
        return "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
    return " ".join(exc.messages)
