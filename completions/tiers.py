"""Which tier an attempt is sent in, and what that changes about the call.

Providers sell the same model cheaper to work that can wait. A deployment offers a tier when it
has prices for it (DeploymentPrice; the registry file's `prices.flex`): no price, no tier, so a
request is never served or charged in a tier nobody priced. Flex processing is OpenAI's
(`service_tier: "flex"` on Chat Completions and the Responses API, at Batch API prices): only a
deployment of the OpenAI format offers it.

A request asks for a tier (CompletionRequest.tier):
- `realtime`: always the standard tier.
- `flex`: always flex. Admission keeps it to the deployments that offer flex (none: refused with
  a 400). Flex "resource unavailable" (a 429 that is not a rate limit) is retried after its
  backoff, in flex.
- `batch`: a provider batch (completions.batching). Admission keeps it to the deployments that
  offer the batch tier; it waits in no line for the next batch of its deployment, and runs
  realtime only when its deadline, less BALANCER_BATCH_RESERVE_SECONDS, comes first.
- `auto` (the default): a `batch`-class request goes flex when its deployment offers it and
  its deadline leaves at least BALANCER_FLEX_SECONDS (a flex call is slow: OpenAI advises a
  15-minute timeout); every other request goes realtime. Flex answering "resource unavailable"
  sends it on in realtime at once, from its own place in line (the tier is the cheapest way to
  finish in time, not a reason to wait); once realtime, a request stays realtime.

Flex calls count against the same rate limits as standard ones at OpenAI, so they go through the
same line; their provider timeout is at least BALANCER_FLEX_SECONDS.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from completions.models import Priority, ServedModel, Tier, TierAsked
from completions.providers import ProviderConfig, ProviderError
from completions.routing import Route
from completions.spend import Prices, prices_of

# The provider kinds with a batch API (completions.providers.batches).
BATCH_KINDS = ("openai", "anthropic")


class TierNotOffered(Exception):
    """A request asked for a tier none of the deployments it may go to offers."""


@dataclass(frozen=True)
class Charge:
    """How one attempt is sold: its `tier`, its `prices` there (None: unpriced) and the standard
    tier's (what it would have cost realtime: the saving is the difference). `fallback`: flex
    chosen by the balancer, which goes realtime if flex cannot take it now."""

    tier: str = Tier.STANDARD
    prices: Prices | None = None
    standard: Prices | None = None
    fallback: bool = False


def offers(served: ServedModel, tier: str) -> bool:
    """Whether a deployment offers `tier` (the standard one always): flex in the OpenAI format,
    the batch tier where its provider has a batch API; each with its prices."""
    if tier == Tier.STANDARD:
        return True
    if tier == Tier.FLEX and served.wire_format != "openai":
        return False
    if tier == Tier.BATCH and served.provider.kind not in BATCH_KINDS:
        return False
    return prices_of(served, tier) is not None


def route_in_tier(route: Route, asked: str) -> Route:
    """A request's route kept to the deployments that offer the tier it pins (flex, batch);
    raises TierNotOffered when none does."""
    if asked not in (TierAsked.FLEX, TierAsked.BATCH):
        return route
    tier = Tier.FLEX if asked == TierAsked.FLEX else Tier.BATCH
    offering = [d for d in route.deployments if offers(d, tier)]
    if not offering:
        where = route.group or str(route.first)
        how = (
            "flex processing (a deployment offers it with flex prices, in the OpenAI format)"
            if tier == Tier.FLEX
            else "batch tier (a deployment of an openai or anthropic provider offers it with batch prices)"
        )
        raise TierNotOffered(f"{where} offers no {how}: ask for tier auto or realtime.")
    if not route.group:
        return route
    # A group's mask names them, even all of them: a deployment added later may not offer it.
    return dataclasses.replace(route, deployments=offering, mask="|".join(str(d.pk) for d in offering))


def choose(
    *, asked: str, priority: str, served_tier: str, offers_flex: bool, left: float | None
) -> tuple[str, bool]:
    """The tier of an attempt (pure), and whether it falls back to realtime when flex is
    unavailable. `served_tier`: its previous attempt's ("" before the first); `left`: seconds to
    its deadline (None: it has none)."""
    if asked == TierAsked.FLEX:
        return Tier.FLEX, False
    if asked == TierAsked.BATCH:
        # Called by a worker only when its batch could not finish in time: realtime.
        return Tier.STANDARD, False
    if asked == TierAsked.REALTIME or priority != Priority.BATCH or not offers_flex:
        return Tier.STANDARD, False
    if served_tier == Tier.STANDARD:
        return Tier.STANDARD, False
    if left is not None and left < settings.BALANCER_FLEX_SECONDS:
        return Tier.STANDARD, False
    return Tier.FLEX, True


def charge_for(
    *, asked: str, priority: str, served_tier: str, deployment: ServedModel | None, left: float | None
) -> Charge:
    """The tier and prices of an attempt to `deployment` (None: its deployment is not known, and
    it is sent realtime, unpriced)."""
    if deployment is None:
        return Charge()
    # Whether it offers flex matters to a batch-class request left to choose, or one pinned to flex.
    wants_flex = asked == TierAsked.FLEX or (asked == TierAsked.AUTO and priority == Priority.BATCH)
    offers_flex = wants_flex and offers(deployment, Tier.FLEX)
    tier, fallback = choose(
        asked=asked, priority=priority, served_tier=served_tier, offers_flex=offers_flex, left=left
    )
    if tier == Tier.FLEX and not offers_flex:
        raise TierNotOffered(f"{deployment} no longer offers flex processing.")
    standard = prices_of(deployment)
    prices = standard if tier == Tier.STANDARD else prices_of(deployment, tier)
    return Charge(tier=tier, prices=prices, standard=standard, fallback=fallback)


def tier_payload(payload: dict[str, Any], tier: str) -> dict[str, Any]:
    """The body sent upstream: a flex attempt's asks for flex processing; a standard attempt's is
    the caller's own (whatever service tier it names)."""
    if tier == Tier.FLEX:
        return {**payload, "service_tier": "flex"}
    if payload.get("service_tier") == "flex":
        return {key: value for key, value in payload.items() if key != "service_tier"}
    return payload


def tier_config(config: ProviderConfig, tier: str) -> ProviderConfig:
    """A flex call's provider configuration: its timeout at least BALANCER_FLEX_SECONDS."""
    if tier == Tier.FLEX and config.timeout < settings.BALANCER_FLEX_SECONDS:
        return dataclasses.replace(config, timeout=settings.BALANCER_FLEX_SECONDS)
    return config


def asked_tier(value: str | None, payload: dict[str, Any], name: str = "tier") -> str:
    """The tier a request asks for: `value` (the API's field or header `name`), else flex when its
    body asks for flex processing itself, else auto. Raises ValueError for an unknown value."""
    if value is None or value == "":
        return TierAsked.FLEX if payload.get("service_tier") == "flex" else TierAsked.AUTO
    value = value.strip().lower()
    if value == Tier.STANDARD:
        value = TierAsked.REALTIME
    if value not in TierAsked.values:
        raise ValueError(f"{name} must be one of {', '.join(TierAsked.values)}, not {value!r}.")
    return value


def flex_unavailable(error: ProviderError | None, tier: str) -> bool:
    """Whether a flex attempt's error says flex had no capacity now: a 429 that is not a rate
    limit (not billed, not news about the deployment's buckets)."""
    if error is None or tier != Tier.FLEX or error.status != 429:
        return False
    body = error.body if isinstance(error.body, dict) else {}
    detail = body.get("error")
    if not isinstance(detail, dict):
        detail = {}
    words = " ".join(str(detail.get(k) or "") for k in ("code", "type", "message")).lower()
    return "resource_unavailable" in words or "resource unavailable" in words
