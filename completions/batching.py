"""The batch tier: requests that can wait, collected per deployment into the provider's own batch
jobs (OpenAI's Batch API, Anthropic's Message Batches) at about half the price.

A deployment offers the batch tier when it has batch prices and its provider has a batch API
(kinds openai and anthropic). Which requests go:
- batch-class requests asking for `tier: auto`, sent to that deployment alone or to its model
  group (and whose route may go to it), neither streamed nor held open by a client (compatible
  calls wait for their answer);
- still waiting in the deployment's line once the oldest of them has waited
  BALANCER_BATCH_COLLECT_SECONDS (or BALANCER_BATCH_MAX_ITEMS of them wait): realtime capacity
  left idle takes batch-class work first (flex, where offered, costs what the batch tier does),
  and only what it cannot take soon is collected — then all of it at once;
- whose deadline (max_wait; none: no deadline) leaves the batch's turnaround (the deployment's
  `turnaround_seconds`, else BALANCER_BATCH_TURNAROUND_SECONDS) plus BALANCER_BATCH_RESERVE_SECONDS.

The periodic task (`batches_tend`, Celery beat every BALANCER_BATCH_POLL_SECONDS, once at a
time for the cluster) collects and submits, at most BALANCER_BATCH_MAX_ITEMS to a batch and
never past the tier's enqueued-token limit (its open batches' tokens included), and polls the
open ones.

One owner at a time. A request is taken out of its line in one Lua step (`line_leave`, as a
cancellation is: one the line granted meanwhile stays with its worker), then its row becomes
`running` in the batch (ProviderBatch), fenced by the batch's claim as an attempt's is; the
lease sweeper leaves such rows to their batch. When the batch ends, each result is applied as an
attempt's outcome (completions.attempts.outcome_apply: the row, the key's line, budgets, metrics,
cost at the batch prices); an item it did not process (cancelled, expired, left out, or failed
transiently) goes back to its line in its own place and runs realtime. A batch whose deadline
nears (its earliest item's, less the reserve), or whose progress says it will not make it, is
cancelled; what it finished meanwhile is recorded, never run again.

A crash between taking requests out of their line and marking their rows leaves them queued in
no line: the sweep puts them back. A crash while submitting leaves a batch `submitting` with its
items running: after SUBMIT_GRACE_SECONDS its items run realtime (logged: the
provider may have received the batch in the last milliseconds before the crash).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone
from redis.exceptions import RedisError

from balancer_project.redis_conn import get_redis
from completions import rows
from completions.attempts import outcome_apply
from completions.lines import line_enter, line_leave
from completions.models import (
    BatchState,
    CompletionRequest,
    CompletionStatus,
    DeploymentPrice,
    Operation,
    Priority,
    ProviderBatch,
    ServedModel,
    Tier,
    TierAsked,
)
from completions.outcomes import Call, attempt_outcome
from completions.providers import provider_for
from completions.providers.batches import BatchAPI, BatchProgress, ItemResult, batch_api
from completions.selectors import deployment_named, provider_config_get
from completions.services import completion_request_dispatch, remaining_wait
from completions.spend import Prices, prices_of
from completions.tiers import BATCH_KINDS, Charge

logger = logging.getLogger(__name__)

LOCK_KEY = "balancer:batches:lock"
# A process that died holding it holds it no longer than this (its next run picks up where it was).
LOCK_SECONDS = 30
# A batch still `submitting` this long after it was made was interrupted (its process died).
SUBMIT_GRACE_SECONDS = 120.0
# The operations a provider batch serves, per wire format.
BATCHED_OPERATIONS = {"openai": (Operation.CHAT, Operation.RESPONSES), "anthropic": (Operation.CHAT,)}


@dataclass
class BatchesResult:
    submitted: int = 0
    items: int = 0
    recorded: int = 0
    rerun: int = 0
    cancelled: int = 0


def pinned(row: CompletionRequest) -> bool:
    """Whether a request waits, in no line, for a provider batch (`tier: batch`)."""
    return row.tier == TierAsked.BATCH and row.served_tier == Tier.BATCH


def batches_tend() -> BatchesResult:
    """Poll the open provider batches, then collect and submit new ones (see the module's text).
    Runs once at a time for the cluster (a Redis lock); never raises for one batch's trouble."""
    result = BatchesResult()
    r = get_redis()
    token = uuid.uuid4().hex
    try:
        if not r.set(LOCK_KEY, token, nx=True, ex=LOCK_SECONDS):
            return result
    except RedisError:
        return result
    try:
        for batch in ProviderBatch.objects.filter(
            state__in=[BatchState.SUBMITTING, BatchState.OPEN, BatchState.CANCELLING]
        ).order_by("created_at"):
            try:
                _tend(batch, result)
            except Exception:
                logger.warning("provider batch %s: could not tend it; trying again", batch.id, exc_info=True)
        # The deployments that offer the batch tier now: their batch prices, with their limits.
        offering = list(
            DeploymentPrice.objects.filter(
                tier=Tier.BATCH, served_model__enabled=True, served_model__provider__kind__in=BATCH_KINDS
            ).select_related("served_model__provider", "served_model__group")
        )
        for price in offering:
            try:
                _collect(price, result)
            except Exception:
                logger.warning("%s: could not collect a batch", price.served_model, exc_info=True)
        _pinned_stranded([price.served_model for price in offering], result)
    finally:
        try:
            if r.get(LOCK_KEY) == token:
                r.delete(LOCK_KEY)
        except RedisError:
            pass
    return result


# -- collecting and submitting -------------------------------------------------------------------


def _collect(price: DeploymentPrice, result: BatchesResult) -> None:
    served = price.served_model
    now = timezone.now()
    turnaround = price.turnaround_seconds or settings.BALANCER_BATCH_TURNAROUND_SECONDS
    needed = turnaround + settings.BALANCER_BATCH_RESERVE_SECONDS
    # Sent to it alone, or to its group (a group's request may go to it unless its route says not).
    sent_here = Q(group="", provider=served.provider.name, model=served.name)
    if served.group is not None:
        sent_here |= Q(group=served.group.name)
    # Waiting in its line (auto), or in none for a provider batch (pinned).
    in_line = Q(
        tier=TierAsked.AUTO,
        started_at__isnull=True,
        priority=Priority.BATCH,
        stream=False,
        reply_to="",
        rate_limited=True,
        undelivered=False,
        budget_wait_until__isnull=True,
    )
    candidates = (
        CompletionRequest.objects.select_related("api_key")
        .filter(
            sent_here,
            in_line | Q(tier=TierAsked.BATCH, served_tier=Tier.BATCH),
            status=CompletionStatus.QUEUED,
            operation__in=BATCHED_OPERATIONS[served.wire_format],
        )
        .order_by("created_at")
    )
    room = None
    if price.enqueued_tokens is not None:
        enqueued = sum(
            ProviderBatch.objects.filter(
                served_model=served, state__in=[BatchState.SUBMITTING, BatchState.OPEN, BatchState.CANCELLING]
            ).values_list("enqueued_tokens", flat=True)
        )
        room = price.enqueued_tokens - enqueued
    eligible = []
    for row in candidates[: settings.BALANCER_BATCH_MAX_ITEMS * 2]:
        if not _may_go(row, served):
            continue
        left = remaining_wait(row)
        if pinned(row):
            if left is not None and left < settings.BALANCER_BATCH_RESERVE_SECONDS:
                result.rerun += _pinned_realtime(row)  # no batch could end in time now
            else:
                eligible.append(row)
        elif left is None or left >= needed:
            eligible.append(row)
    eligible = eligible[: settings.BALANCER_BATCH_MAX_ITEMS]
    # Flushed by age (its oldest has waited BALANCER_BATCH_COLLECT_SECONDS: the line is not
    # taking them soon), by size, or because a request asked for a batch; then everything
    # eligible goes, younger ones too.
    oldest = eligible[0].created_at if eligible else now
    due = (
        len(eligible) >= settings.BALANCER_BATCH_MAX_ITEMS
        or any(pinned(row) for row in eligible)
        or (now - oldest).total_seconds() >= settings.BALANCER_BATCH_COLLECT_SECONDS
    )
    if not eligible or not due:
        return
    by_operation: dict[str, list[CompletionRequest]] = {}
    for row in eligible:
        cost = row.estimated_input_tokens + row.estimated_output_tokens
        if room is not None:
            if cost > room:
                break  # the next in arrival order waits for room: none passes it
            room -= cost
        by_operation.setdefault(row.operation, []).append(row)
    for operation, chosen in by_operation.items():
        _submit(served, operation, chosen, result)


def _may_go(row: CompletionRequest, served: ServedModel) -> bool:
    """Whether a request may go to deployment `served`: one sent to it alone, or a group's whose
    route names it (an empty route: any deployment of the group in its format)."""
    if not row.group:
        return True
    if row.deployments:
        return str(served.pk) in row.deployments.split("|")
    named = deployment_named(provider=row.provider, model=row.model)
    return named is not None and named.wire_format == served.wire_format


def _submit(
    served: ServedModel, operation: str, chosen: list[CompletionRequest], result: BatchesResult
) -> None:
    batch = ProviderBatch.objects.create(
        served_model=served,
        provider=served.provider.name,
        model=served.name,
        claim=uuid.uuid4().hex,
        prices={
            "batch": _json(prices_of(served, Tier.BATCH)),
            "standard": _json(prices_of(served)),
        },
    )
    # Out of its line first, in one step each: one granted meanwhile stays with its worker. A
    # pinned one is in no line.
    left = [
        row
        for row in chosen
        if pinned(row) or (row.line is not None and line_leave(line=row.line, request_id=str(row.id)))
    ]
    now = timezone.now()
    moved_ids = {str(i) for i in _move_in(batch, [row.id for row in left], now)}
    items = [row for row in left if str(row.id) in moved_ids]
    for row in left:
        if str(row.id) not in moved_ids:
            # Ended meanwhile (cancelled, say): its end settled it; nothing to put back.
            logger.info("request %s: left its line for a batch but had ended", row.id)
    if not items:
        batch.state, batch.ended_at = BatchState.ENDED, now
        batch.save(update_fields=["state", "ended_at"])
        return
    deadlines = [
        row.created_at + timedelta(seconds=row.max_wait) for row in items if row.max_wait is not None
    ]
    batch.items = len(items)
    batch.enqueued_tokens = sum(r.estimated_input_tokens + r.estimated_output_tokens for r in items)
    batch.deadline = min(deadlines) if deadlines else None
    batch.save(update_fields=["items", "enqueued_tokens", "deadline"])
    api = _api(batch)
    try:
        if api is None:
            raise RuntimeError(f"{batch.provider}/{batch.model} has no batch API")
        # A group's request is called with this deployment's model name, as a claim does.
        bodies = [(str(r.id), {**r.payload, "model": served.name}) for r in items]
        upstream_id = api.submit(bodies, operation, label=str(batch.id))
    except Exception as exc:
        logger.warning("provider batch %s: submitting it failed (%s); its items run realtime", batch.id, exc)
        _finish(batch, BatchState.FAILED, error=str(exc)[:2000])
        result.rerun += sum(_rerun(row, batch) for row in items)
        return
    ProviderBatch.objects.filter(id=batch.id).update(
        upstream_id=upstream_id, state=BatchState.OPEN, submitted_at=timezone.now()
    )
    logger.info(
        "provider batch %s: %d request(s) of %s submitted as %s", batch.id, len(items), served, upstream_id
    )
    result.submitted += 1
    result.items += len(items)


def _move_in(batch: ProviderBatch, ids: list[Any], now: datetime) -> list[Any]:
    """Make the rows of `ids` that are still queued running in `batch` (one statement); returns
    the ids it moved."""
    if not ids:
        return []
    CompletionRequest.objects.filter(id__in=ids, status=CompletionStatus.QUEUED).update(
        provider=batch.provider,
        model=batch.model,
        status=CompletionStatus.RUNNING,
        claim=batch.claim,
        claimed_at=now,
        started_at=now,
        attempts=F("attempts") + 1,
        served_tier=Tier.BATCH,
        provider_batch=batch,
    )
    return list(
        CompletionRequest.objects.filter(
            id__in=ids, provider_batch=batch, status=CompletionStatus.RUNNING
        ).values_list("id", flat=True)
    )


# -- polling and ending ---------------------------------------------------------------------------


def _tend(batch: ProviderBatch, result: BatchesResult) -> None:
    now = timezone.now()
    if batch.state == BatchState.SUBMITTING:
        if (now - batch.created_at).total_seconds() > SUBMIT_GRACE_SECONDS:
            logger.warning(
                "provider batch %s: its submission was interrupted; its %d item(s) run realtime (the "
                "provider may have received it just before)",
                batch.id,
                batch.items,
            )
            _finish(batch, BatchState.FAILED, error="Its submission was interrupted.")
            result.rerun += sum(_rerun(row, batch) for row in _items(batch))
        return
    api = _api(batch)
    if api is None:
        return
    progress = api.progress(batch.upstream_id)
    if batch.upstream_status != progress.status:
        ProviderBatch.objects.filter(id=batch.id).update(upstream_status=progress.status)
    if progress.ended:
        results = [] if progress.failed else api.results(batch.upstream_id)
        _end(batch, progress, results, result)
        return
    if batch.state == BatchState.OPEN and _late(batch, progress, now):
        logger.info("provider batch %s: it would not finish by its deadline; cancelling it", batch.id)
        api.cancel(batch.upstream_id)
        ProviderBatch.objects.filter(id=batch.id).update(state=BatchState.CANCELLING)
        result.cancelled += 1


def _late(batch: ProviderBatch, progress: BatchProgress, now: datetime) -> bool:
    """Whether an open batch will not finish in time for its earliest deadline: the deadline less
    the reserve has come, or its progress so far puts its end past that."""
    if batch.deadline is None:
        return False
    cutoff = batch.deadline - timedelta(seconds=settings.BALANCER_BATCH_RESERVE_SECONDS)
    if now >= cutoff:
        return True
    started = batch.submitted_at or batch.created_at
    if progress.done <= 0 or progress.total <= 0:
        return False
    projected = started + (now - started) * (progress.total / progress.done)
    return projected > cutoff


def _end(
    batch: ProviderBatch, progress: BatchProgress, results: list[ItemResult], result: BatchesResult
) -> None:
    by_id = {item.custom_id: item for item in results}
    prices = batch.prices or {}
    charge = Charge(
        tier=Tier.BATCH,
        prices=Prices.from_json(prices.get("batch")),
        standard=Prices.from_json(prices.get("standard")),
    )
    deployment = batch.served_model or deployment_named(provider=batch.provider, model=batch.model)
    started = batch.submitted_at or batch.created_at
    seconds = (timezone.now() - started).total_seconds()
    succeeded = failed = rerun = 0
    for row in _items(batch):
        item = by_id.get(str(row.id))
        answered = item is not None and (item.result is not None or (item.error and not item.error.transient))
        if not answered or item is None:
            rerun += _rerun(row, batch)
            continue
        outcome = attempt_outcome(
            call=Call(result=item.result, error=item.error, seconds=seconds),
            estimate=(row.estimated_input_tokens, row.estimated_output_tokens),
            attempts=row.attempts,
            left=remaining_wait(row),
            backoff=0.0,
        )
        outcome_apply(
            request=row, line=None, outcome=outcome, seconds=seconds, deployment=deployment, charge=charge
        )
        if item.result is not None:
            succeeded += 1
        else:
            failed += 1
    state = BatchState.FAILED if progress.failed else BatchState.ENDED
    _finish(batch, state, error=progress.error, succeeded=succeeded, failed=failed, rerun=rerun)
    result.recorded += succeeded + failed
    result.rerun += rerun
    logger.info(
        "provider batch %s ended (%s): %d answered, %d failed, %d run realtime",
        batch.id,
        progress.status,
        succeeded,
        failed,
        rerun,
    )


def _items(batch: ProviderBatch) -> list[CompletionRequest]:
    """The requests `batch` still owns."""
    return list(
        CompletionRequest.objects.select_related("api_key").filter(
            provider_batch=batch, status=CompletionStatus.RUNNING, claim=batch.claim
        )
    )


def _rerun(row: CompletionRequest, batch: ProviderBatch) -> bool:
    """An item the batch did not finish: back in its line in its own place (its arrival), to run
    realtime — or, asking for a batch with time left for another, waiting for the next one.
    False when the batch no longer owns it."""
    left = remaining_wait(row)
    again = row.tier == TierAsked.BATCH and (left is None or left >= settings.BALANCER_BATCH_RESERVE_SECONDS)
    tier = Tier.BATCH if again else Tier.STANDARD
    if not rows.finish(
        row.id, CompletionStatus.RUNNING, claim=batch.claim, status=CompletionStatus.QUEUED, served_tier=tier
    ):
        return False
    if again:
        return True
    row.status = CompletionStatus.QUEUED
    _to_line(row)
    return True


def _to_line(row: CompletionRequest) -> None:
    """A queued request that goes realtime: into its line by its arrival, and its task."""
    row.served_tier = Tier.STANDARD
    line = row.line
    if line is not None:
        line_enter(request=row, line=line, max_wait=remaining_wait(row))
    completion_request_dispatch(request=row)


def _pinned_realtime(row: CompletionRequest) -> bool:
    """A request waiting for a provider batch that none can serve in time (its deadline less the
    reserve has come, or no deployment it may go to offers the tier any more): into its line,
    realtime."""
    moved = CompletionRequest.objects.filter(
        id=row.id, status=CompletionStatus.QUEUED, served_tier=Tier.BATCH
    ).update(served_tier=Tier.STANDARD)
    if not moved:
        return False
    logger.info("request %s: no provider batch can take it in time; it runs realtime", row.id)
    _to_line(row)
    return True


def _pinned_stranded(offering: list[ServedModel], result: BatchesResult) -> None:
    """Requests waiting for a provider batch that no deployment in `offering` (those offering
    one now) may take go realtime."""
    waiting = CompletionRequest.objects.select_related("api_key").filter(
        status=CompletionStatus.QUEUED, tier=TierAsked.BATCH, served_tier=Tier.BATCH
    )[:1000]
    for row in waiting:
        if not any(_sent_to(row, d) and _may_go(row, d) for d in offering):
            result.rerun += _pinned_realtime(row)


def _sent_to(row: CompletionRequest, served: ServedModel) -> bool:
    if row.group:
        return served.group is not None and served.group.name == row.group
    return (row.provider, row.model) == (served.provider.name, served.name)


def _finish(batch: ProviderBatch, state: str, *, error: str = "", **counts: int) -> None:
    ProviderBatch.objects.filter(id=batch.id).update(
        state=state, ended_at=timezone.now(), error=error, **counts
    )


def _api(batch: ProviderBatch) -> BatchAPI | None:
    config = provider_config_get(provider=batch.provider, model=batch.model)
    if config is None:
        logger.warning("provider batch %s: %s/%s is no longer served", batch.id, batch.provider, batch.model)
        return None
    return batch_api(provider_for(config))


def _json(prices: Prices | None) -> dict[str, str] | None:
    return prices.as_json() if prices is not None else None
