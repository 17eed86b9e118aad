"""Periodic care of the request table (Celery beat): recover requests whose task or line was
lost, and delete old history.

Losses this repairs:
- A worker killed mid-call (SIGKILL, OOM, a lost machine): its row stays `running`, and Redis
  would redeliver its unacknowledged message only after the visibility timeout (an hour). Once
  the attempt must be over (the provider's timeout plus BALANCER_LEASE_MARGIN_SECONDS since it was
  claimed), its reservation is given back and it runs again, keeping its place in line.
- Redis restarted without its data: queues, lines and tickets are gone, the rows are not. A
  queued request of a limited model that is in no line goes back in line (oldest first); one of
  an unlimited model is dispatched again if its model's queue is empty.
A request already finished is never touched (every step is a compare-and-swap on its status),
and a duplicate task is harmless for the same reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from balancer_project.redis_conn import get_redis
from completions.models import CompletionRequest, CompletionStatus, Provider
from completions.services import completion_request_dispatch, completion_request_finish, remaining_wait
from ratelimit import limiter
from ratelimit.services import key_line, request_enqueue, request_settle

logger = logging.getLogger(__name__)


@dataclass
class SweepResult:
    rerun: int = 0
    failed: int = 0
    requeued: int = 0
    redispatched: int = 0


def completion_requests_sweep(
    *, queued_after: float | None = None, running_margin: float | None = None
) -> SweepResult:
    """One pass over running and queued rows; see the module docstring."""
    queued_after = settings.BALANCER_SWEEP_QUEUED_SECONDS if queued_after is None else queued_after
    margin = settings.BALANCER_LEASE_MARGIN_SECONDS if running_margin is None else running_margin
    now = timezone.now()
    result = SweepResult()
    timeouts = dict(Provider.objects.values_list("name", "timeout_seconds"))
    stale = CompletionRequest.objects.filter(
        status=CompletionStatus.RUNNING, claimed_at__lt=now - timedelta(seconds=margin)
    )
    for row in stale.order_by("created_at"):
        limit = timeouts.get(row.provider, 600.0) + margin
        if row.claimed_at and row.claimed_at <= now - timedelta(seconds=limit):
            _recover_running(row, result)
    waiting = CompletionRequest.objects.filter(
        status=CompletionStatus.QUEUED, created_at__lt=now - timedelta(seconds=queued_after)
    )
    empty_queues: dict[str, bool] = {}
    for row in waiting.order_by("created_at"):
        _recover_queued(row, result, empty_queues)
    if result != SweepResult():
        logger.warning("sweep recovered requests: %s", result)
    return result


def _recover_running(row: CompletionRequest, result: SweepResult) -> None:
    rid = str(row.id)
    ticket = request_settle(line=row.line, request_id=rid, mode="refund") if row.line else None
    if row.attempts >= settings.BALANCER_MAX_ATTEMPTS:
        if row.key_limited:
            request_settle(line=key_line(row.api_key_id), request_id=rid, mode="refund")
        if completion_request_finish(
            request_id=rid,
            from_status=CompletionStatus.RUNNING,
            status=CompletionStatus.FAILED,
            stream=row.stream,
            error={"message": f"The worker running it was lost, {row.attempts} times.", "transient": True},
        ):
            result.failed += 1
        return
    if not CompletionRequest.objects.filter(
        id=row.id, status=CompletionStatus.RUNNING, claimed_at=row.claimed_at
    ).update(status=CompletionStatus.QUEUED):
        return  # it finished (or was recovered) meanwhile
    if row.line:
        request_enqueue(request=row, line=row.line, max_wait=remaining_wait(row), ticket=ticket)
    completion_request_dispatch(request=row)
    result.rerun += 1


def _recover_queued(row: CompletionRequest, result: SweepResult, empty_queues: dict[str, bool]) -> None:
    rid = str(row.id)
    if row.line or row.key_limited:
        lines = [line for line in (row.line, key_line(row.api_key_id) if row.key_limited else None) if line]
        if any(limiter.in_line(line, rid) for line in lines):
            return
        line = key_line(row.api_key_id) if row.key_limited else row.line
        request_enqueue(request=row, line=line, max_wait=remaining_wait(row))
        completion_request_dispatch(request=row, line=line)
        result.requeued += 1
        return
    queue = row.queue_name
    if queue not in empty_queues:
        empty_queues[queue] = get_redis().llen(queue) == 0
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
            return deleted
        deleted += CompletionRequest.objects.filter(id__in=ids).delete()[0]
