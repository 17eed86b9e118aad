"""Periodic care (Celery beat, once for the cluster, never on a worker's consumer loop): deliver
the outbox, recover requests whose task or line was lost, tend the rate-limit lines, tell the
workers about new models, and delete old history.

Losses this repairs:
- A worker killed mid-call (SIGKILL, OOM, a lost machine), hung, or cut off from Redis: its row
  stays `running`, and Redis would redeliver its unacknowledged message only after the
  visibility timeout (an hour). Its attempt's lease ends (completions.leases); the tend takes
  the request from that attempt, gives its reservation back and runs it again from its own
  place in line, within seconds. A request running long on a live worker is never touched.
- Redis restarted without its data: queues, lines and tickets are gone, the rows are not. A
  queued request of a limited model that is in no line goes back in line (oldest first); one of
  an unlimited model is dispatched again if its model's queue is empty — or, when the tend has
  seen Redis lose its data and Redis is the broker, in any case: every task in it was lost with
  it, and the requests accepted since may already fill the queue again.
- Redis unreachable when a request was accepted: its row is queued and `undelivered` (the
  outbox). The tend delivers those rows, oldest first, as soon as Redis answers.
- Redis restarted without its data, seen by the tend within seconds (its epoch key is gone):
  the sweep runs at once over every queued row, not only those older than the sweep's age.
- A key deactivated while some process still had it cached (BALANCER_REGISTRY_CACHE_SECONDS):
  a request accepted in that window can never start (the claim checks the key); the sweep
  cancels it, with the reason, as the deactivation did the others.
A request already finished is never touched (every step is a compare-and-swap on its status),
and a duplicate task is harmless for the same reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import redis
from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from redis.exceptions import RedisError

from balancer_project.celery import app, consume_options, queue_depths
from balancer_project.redis_conn import WORKERS_KEY, decoded, get_redis
from completions import rows
from completions.leases import lease_lose, leases_ended, suspects_forget, suspects_known
from completions.lines import (
    Expired,
    group_sync,
    key_quota_sync,
    line_enter,
    line_rebuild,
    line_return,
    line_settle,
    line_watch,
    lines_forget_retired,
    model_line,
    quota_sync,
    wake_publish,
)
from completions.models import (
    CompletionRequest,
    CompletionStatus,
    ModelGroup,
    ProviderBatch,
    ServedModel,
    Tier,
)
from completions.routing import group_unhealthy
from completions.selectors import draining_models, model_group_get, served_model_in_use, served_queue_names
from completions.services import (
    DispatchFailed,
    api_key_requests_cancel,
    budget_waits_deliver,
    completion_request_cancel,
    completion_request_deliver,
    completion_request_dispatch,
    completion_request_fall_back,
    completion_request_finish,
    completion_requests_expire,
    remaining_wait,
    revoked_reason,
)
from completions.spend import BudgetExceeded, budgets_reconcile, budgets_warn
from completions.workers import EPOCH_KEY
from ratelimit import limiter
from ratelimit.limiter import SettleMode
from ratelimit.lines import key_line
from ratelimit.models import KeyQuota, Quota

logger = logging.getLogger(__name__)


@dataclass
class SweepResult:
    rerun: int = 0
    failed: int = 0
    requeued: int = 0
    redispatched: int = 0
    revoked: int = 0
    orphaned: int = 0
    released: int = 0
    budgets_settled: int = 0


def completion_requests_sweep(*, queued_after: float | None = None, tasks_lost: bool = False) -> SweepResult:
    """One pass over running and queued rows; see the module docstring. `tasks_lost`: the broker
    lost every task it held (Redis, the broker, lost its data), so a queued request of an
    unlimited model is dispatched again whether or not its model's queue is empty."""
    queued_after = settings.BALANCER_SWEEP_QUEUED_SECONDS if queued_after is None else queued_after
    now = timezone.now()
    result = SweepResult()
    # Requests of a deactivated key accepted while a process still had the key cached: their
    # claim refuses them, so they would wait for ever.
    revoked_keys = (
        CompletionRequest.objects.filter(status=CompletionStatus.QUEUED, api_key__is_active=False)
        .values_list("api_key_id", flat=True)
        .distinct()
    )
    for api_key_id in list(revoked_keys):
        result.revoked += api_key_requests_cancel(api_key_id=api_key_id, reason=revoked_reason())
    running_recover(result=result)
    result.released += key_holds_release()
    result.budgets_settled += budgets_reconcile()
    budgets_warn()
    lines_forget_retired()
    # Not those in the outbox: it delivers them in their order, each checked against its budgets
    # as a first delivery is (the sweep's re-entry is of requests delivered before).
    waiting = CompletionRequest.objects.filter(
        status=CompletionStatus.QUEUED,
        created_at__lt=now - timedelta(seconds=queued_after),
        undelivered=False,
        budget_wait_until__isnull=True,  # in no line: waiting for their budget's next period
    ).exclude(served_tier=Tier.BATCH)  # in no line: waiting for a provider batch (completions.batching)
    empty_queues: dict[str, bool] = {}
    existing = set(ServedModel.objects.values_list("provider__name", "name"))
    for row in waiting.order_by("created_at"):
        if not row.group and (row.provider, row.model) not in existing:
            # Sent to a model that was deleted (and its cancellation then missed Redis).
            reason = f"Cancelled: {row.provider}/{row.model} was deleted."
            result.orphaned += completion_request_cancel(request=row, reason=reason, retries_too=True)
            continue
        _recover_queued(row, result, empty_queues, tasks_lost)
    if result != SweepResult():
        logger.warning("sweep recovered requests: %s", result)
    return result


def key_holds_release(*, settle_age: float = 60.0) -> int:
    """Give back what client keys' lines hold for requests that have ended. Every way a request
    ends settles its key's reservation; this catches one that a crash or a Redis blip missed, so
    a key's reservation lasts exactly as long as its request, however long it waits and runs.
    Only reservations older than `settle_age` are looked at (one taken at submission may precede
    its row). Returns how many were given back."""
    released = 0
    now = limiter.redis_now()
    for api_key_id in KeyQuota.objects.values_list("api_key_id", flat=True):
        line = key_line(api_key_id)
        held = limiter.holders(line, lease_ends_before=now + settings.BALANCER_KEY_HOLD_SECONDS - settle_age)
        if not held:
            continue
        rows_of = {
            str(rid): (status, attempts, used_in, used_out)
            for rid, status, attempts, used_in, used_out in CompletionRequest.objects.filter(
                id__in=held
            ).values_list("id", "status", "attempts", "input_tokens", "output_tokens")
        }
        for rid in held:
            status, attempts, used_in, used_out = rows_of.get(rid, (None, 0, None, None))
            if status in (CompletionStatus.QUEUED, CompletionStatus.RUNNING):
                continue
            # Charged what it used, as its own settlement would have; kept whole when it ran
            # without a report of its usage; given back when it never ran.
            if used_in is not None:
                settled = limiter.settle(
                    line, rid, mode=SettleMode.USAGE, input_tokens=used_in, output_tokens=used_out or 0
                )
                wake_publish(line=line, wake=settled.wake)
            else:
                line_settle(
                    line=line, request_id=rid, mode=SettleMode.KEEP if attempts else SettleMode.REFUND
                )
            released += 1
    return released


def running_recover(*, result: SweepResult | None = None, batch: int = 1000) -> SweepResult:
    """The running requests whose attempt's lease has ended (completions.leases): each is taken
    from that attempt and runs again from its own place in line, or fails after its last
    attempt. Run by the tend every few seconds; a request running long on a live worker is never
    touched, however long it runs."""
    result = result or SweepResult()
    cutoff = timezone.now() - timedelta(seconds=settings.BALANCER_LEASE_SECONDS)
    running = [
        (str(rid), claim)
        for rid, claim in CompletionRequest.objects.filter(
            status=CompletionStatus.RUNNING, claimed_at__lt=cutoff
        )
        # In a provider batch: its batch owns it (completions.batching), not a worker's lease.
        .exclude(served_tier=Tier.BATCH)
        .values_list("id", "claim")[:batch]
    ]
    ended = leases_ended(running)
    gone = set(suspects_known()) - {rid for rid, _ in running}
    suspects_forget(sorted(gone))
    for rid, token in ended:
        _recover_running(rid, token, result)
    return result


def _recover_running(rid: str, token: str, result: SweepResult) -> None:
    row = (
        CompletionRequest.objects.select_related("api_key")
        .filter(id=rid, status=CompletionStatus.RUNNING, claim=token)
        .first()
    )
    suspects_forget([rid])
    if row is None:
        return  # it finished, or another attempt runs it
    lease_lose(request_id=rid, token=token)
    logger.warning("request %s: attempt %d lost its worker (its lease ended)", rid, row.attempts)
    if row.attempts >= settings.BALANCER_MAX_ATTEMPTS:
        if completion_request_finish(
            request_id=rid,
            from_status=CompletionStatus.RUNNING,
            claim=token,
            status=CompletionStatus.FAILED,
            error={"message": f"The worker running it was lost, {row.attempts} times.", "transient": True},
        ):
            if row.line:
                line_settle(line=row.line, request_id=rid, mode=SettleMode.REFUND, token=token)
            if row.key_limited:
                line_settle(line=key_line(row.api_key_id), request_id=rid, mode=SettleMode.REFUND)
            result.failed += 1
        return
    if not rows.finish(rid, CompletionStatus.RUNNING, claim=token, status=CompletionStatus.QUEUED):
        return  # it finished meanwhile
    row.status = CompletionStatus.QUEUED
    # Back in its own place with its reservation returned, in one step; a reservation already
    # given back (its slot's lease ran out too) leaves it to take its place by arrival.
    if row.line and not line_return(line=row.line, request_id=rid, in_seconds=0.0, token=token):
        line_enter(request=row, line=row.line, max_wait=remaining_wait(row))
    completion_request_dispatch(request=row)
    result.rerun += 1


def _recover_queued(
    row: CompletionRequest, result: SweepResult, empty_queues: dict[str, bool], tasks_lost: bool
) -> None:
    rid = str(row.id)
    if row.line or row.key_limited:
        if row.key_limited and row.line and limiter.in_line(row.line, rid):
            return  # its key let it through to its model's line, where it waits
        # Its first line (its key's, or its model's), if it is neither there nor started from it.
        if completion_request_deliver(request=row, waits_for_key=row.key_limited, absent=True):
            result.requeued += 1
        return
    queue = row.queue_name
    if queue not in empty_queues:
        empty_queues[queue] = tasks_lost or queue_depths([queue])[queue] == 0
    if empty_queues[queue]:  # nothing pending for its model, yet it waits: its task was lost
        completion_request_dispatch(request=row)
        result.redispatched += 1


def completion_requests_purge(*, older_than_days: float | None = None, batch: int = 1000) -> int:
    """Delete finished requests older than the retention period (BALANCER_RETENTION_DAYS; 0 or
    less keeps everything). Deletes in batches so no transaction grows large."""
    days = settings.BALANCER_RETENTION_DAYS if older_than_days is None else older_than_days
    if days <= 0:
        return 0
    cutoff = timezone.now() - timedelta(days=days)
    old = CompletionRequest.objects.filter(
        Q(finished_at__lt=cutoff), ~Q(status__in=[CompletionStatus.QUEUED, CompletionStatus.RUNNING])
    )
    deleted = 0
    while True:
        ids = list(old.values_list("id", flat=True)[:batch])
        if not ids:
            break
        deleted += CompletionRequest.objects.filter(id__in=ids).delete()[0]
    # Provider batches that ended before the cutoff (a request left from one no longer links it).
    ProviderBatch.objects.filter(ended_at__lt=cutoff).delete()
    return deleted


ANNOUNCED_QUEUES_KEY = "balancer:queues:announced"
ANNOUNCED_WORKERS_KEY = "balancer:queues:workers"


# The replication id of the Redis primary the tend last saw (INFO replication: master_replid). A
# replica promoted by a failover, or a Redis restarted from a snapshot, answers with another.
PRIMARY_KEY = "balancer:primary"


@dataclass
class TendResult:
    redis_was_reset: bool = False
    primary_changed: bool = False
    delivered: int = 0
    rerun: int = 0
    expired: int = 0
    fell_back: int = 0
    drained: int = 0
    announced_queues: int = 0


def tend() -> TendResult:
    """The periodic care of the whole cluster (Celery beat, every BALANCER_TEND_SECONDS):

    1. Redis lost its data (the epoch key is gone): recover every queued request now. Or Redis
       has a new primary (a failover, a restart from a snapshot) that may have missed the last
       writes: rebuild what those could have held (primary_adopt).
    2. Deliver the outbox (requests accepted while Redis was unreachable), oldest first, and the
       batch-class requests whose budget's new period has begun. Run again the requests whose
       attempt's lease ended (running_recover).
    3. Tend the lines: re-write every quota into Redis (it may have lost them, or a save may have
       happened while it was unreachable); expire passed deadlines, free lost slots, re-wake a
       head whose wake-up was lost. The requests waiting for a model group none of whose
       deployments is healthy go to its fallback group, if it names one.
    4. Tell the workers to consume the queue of every new model (and every queue to a worker
       that started since the last tend).
    """
    result = TendResult()
    r = get_redis()
    if not r.exists(EPOCH_KEY):
        # A new Redis (every first start) or one restarted without its data: every line is
        # written again from the database, then every queued request is put back in line. Worth
        # a warning only when there were some. The epoch is written once that is done, so a tend
        # that fails on the way leaves it to the next one.
        result.redis_was_reset = True
        seen_at = timezone.now().timestamp()
        lines_rebuild()
        recovered = completion_requests_sweep(queued_after=0, tasks_lost=not settings.BROKER_IS_RABBITMQ)
        r.set(EPOCH_KEY, str(seen_at), nx=True)
        back = recovered.requeued + recovered.redispatched + recovered.rerun
        (logger.warning if back else logger.info)(
            "Redis is new, or restarted without its data: %d queued or running request(s) put back in line",
            back,
        )
    elif primary_changed(r):
        result.primary_changed = True
        primary_adopt()
    result.delivered = completion_requests_redeliver() + budget_waits_deliver()
    result.rerun = running_recover().rerun
    expired = lines_tend()
    result.expired = len(expired.request_ids)
    result.fell_back = groups_fall_back()
    result.drained = models_drained()
    result.announced_queues = queues_announce()
    return result


def primary_changed(r: redis.Redis) -> bool:
    """Whether the Redis primary is another than at the last tend (its replication id differs).
    Remembers this one. False the first time, and where INFO tells no replication id."""
    replid = r.info("replication").get("master_replid")
    if not replid:
        return False
    seen = r.set(PRIMARY_KEY, replid, get=True)
    return seen is not None and seen != replid


def primary_adopt() -> None:
    """A new primary was a replica, which copies its primary's writes a moment after they are
    made: the last ones before the failure may be missing. The buckets and budget periods those
    writes touched rebuild themselves at their first use (ratelimit/lua/_primary.lua); a line
    entry that went missing is found now, by a sweep of every queued request, not after the
    sweep's age. Leases need nothing: a lost renewal is renewed within a quarter lease."""
    recovered = completion_requests_sweep(queued_after=0)
    logger.warning(
        "Redis has a new primary (a failover, or a restart from a snapshot): buckets start empty "
        "and budgets are built again from the database; %d request(s) put back in line",
        recovered.requeued + recovered.redispatched + recovered.rerun,
    )


def models_drained() -> int:
    """Disabled models whose last waiting request has ended stop draining: their queues are no
    longer consumed. Returns how many."""
    done = [m.pk for m in draining_models() if not served_model_in_use(served_model=m)]
    if done:
        ServedModel.objects.filter(pk__in=done, enabled=False).update(draining=False)
        logger.info("%d disabled model(s) drained: their queues are no longer consumed", len(done))
    return len(done)


def completion_requests_redeliver(*, batch: int = 500) -> int:
    """The outbox: put requests accepted while Redis was unreachable in line, oldest first.
    Stops at the first that still cannot be delivered (Redis is still away: the next tend
    goes on from there, so the order holds)."""
    delivered = 0
    undelivered = CompletionRequest.objects.filter(undelivered=True).order_by("created_at")
    for row in undelivered[:batch]:
        if row.status == CompletionStatus.QUEUED:
            try:
                completion_request_deliver(request=row, waits_for_key=row.key_limited, first=True)
            except BudgetExceeded:
                pass  # ended, failed with the reason: its budget could not take it
            except (DispatchFailed, RedisError):
                return delivered
            delivered += 1
        CompletionRequest.objects.filter(id=row.id).update(undelivered=False)
    return delivered


def lines_rebuild() -> None:
    """Redis lost its data (or is new): write every line again from the database and start it
    conservatively (completions.lines.line_rebuild). A process that finds a line lost before this
    runs does the same for that line."""
    lines = [model_line(q.served_model) for q in Quota.objects.select_related("served_model__provider")]
    lines += [group.line for group in ModelGroup.objects.all()]
    lines += [key_line(kq.api_key_id) for kq in KeyQuota.objects.all() if kq.limited]
    for line in lines:
        try:
            line_rebuild(line)
        except Exception:  # one line's trouble leaves the others to be written, and itself to its first use
            logger.exception("line %s: could not be written again after Redis lost its data", line)


def lines_tend() -> Expired:
    """Re-write every quota into Redis, then watch every line (see tend, step 3)."""
    expired: list[str] = []
    quotas = {q.served_model_id: q for q in Quota.objects.all()}
    for served in ServedModel.objects.select_related("provider"):
        quota_sync(served_model=served, quota=quotas.get(served.id), wake=False)
        # Unlimited models too: one whose quota was just removed may still have a line to drain.
        expired += line_watch(line=model_line(served)).request_ids
    for group in ModelGroup.objects.all():
        group_sync(group=group, wake=False, quotas=quotas)
        expired += line_watch(line=group.line).request_ids
    for key_quota in KeyQuota.objects.all():
        key_quota_sync(key_quota=key_quota, wake=False)
        expired += line_watch(line=key_line(key_quota.api_key_id)).request_ids
    if expired:
        completion_requests_expire(request_ids=expired)
    return Expired(expired)


def groups_fall_back(*, batch: int = 500) -> int:
    """Step 3, for groups with a fallback: while none of a group's deployments is healthy (all
    cooling down after failures), its waiting requests move to the fallback's line, oldest
    first, `batch` per group per tend; once only (a request moved is never moved again).
    Returns how many moved."""
    moved = 0
    for group in ModelGroup.objects.filter(fallback__isnull=False).select_related("fallback"):
        if group.fallback is None or not group_unhealthy(group):
            continue
        fallback = model_group_get(name=group.fallback.name)
        if fallback is None or not fallback.deployments_served:
            continue
        waiting = CompletionRequest.objects.filter(
            id__in=limiter.members(group.line, batch),
            status=CompletionStatus.QUEUED,
            group=group.name,
            fallback_from="",
        ).select_related("api_key")
        for row in waiting.order_by("created_at"):
            moved += completion_request_fall_back(request=row, group=group, fallback=fallback)
    return moved


def queues_announce() -> int:
    """Ask the workers to consume queues they may not know: every new model's queue, to all;
    every queue, to a worker that started since the last tend. Returns the number of new queues.
    (A worker also reads every queue once when it starts.)"""
    r = get_redis()
    wanted = sorted(served_queue_names())
    announced = decoded(r.smembers(ANNOUNCED_QUEUES_KEY))
    new = [q for q in wanted if q not in announced]
    workers = decoded(r.zrange(WORKERS_KEY, 0, -1))
    known = decoded(r.smembers(ANNOUNCED_WORKERS_KEY))
    fresh = sorted(workers - known)
    declared = consume_options()
    exchange_type = declared.pop("exchange_type", "direct")
    for queue in new:
        app.control.add_consumer(queue, exchange_type=exchange_type, options=declared, reply=False)
    if fresh:
        for queue in wanted:
            app.control.add_consumer(
                queue, exchange_type=exchange_type, options=declared, destination=fresh, reply=False
            )
    pipe = r.pipeline()
    if new:
        pipe.sadd(ANNOUNCED_QUEUES_KEY, *new)
    if fresh:
        pipe.sadd(ANNOUNCED_WORKERS_KEY, *fresh)
    stale = known - workers
    if stale:
        pipe.srem(ANNOUNCED_WORKERS_KEY, *stale)
    pipe.execute()
    return len(new)
