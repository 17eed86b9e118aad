"""Writes: API keys, submitting, cancelling and executing completion requests."""

from __future__ import annotations

import logging
import random
import secrets
import uuid
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from balancer_project.redis_conn import get_redis
from completions.events import completion_event_publish
from completions.models import ApiKey, CompletionRequest, CompletionStatus, ServedModel
from completions.providers import ProviderError, provider_for
from completions.selectors import WORKERS_KEY, api_key_hash, provider_config_get
from completions.tokens import estimate_input_tokens, requested_output_cap

logger = logging.getLogger(__name__)

KEY_PREFIX = "lb-"


class DispatchFailed(Exception):
    """The broker did not take the task; the request was marked failed."""


def api_key_create(*, name: str, user: AbstractBaseUser | None = None) -> tuple[ApiKey, str]:
    """Create a client key. Returns the row and the raw key, which is not stored and cannot be
    shown again."""
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(name=name, prefix=raw[:10], key_hash=api_key_hash(raw), user=user)
    return key, raw


def api_key_for_user(*, user: AbstractBaseUser) -> ApiKey:
    """The key a staff user acts with in the browsable API (session login, no raw key needed)."""
    key = ApiKey.objects.filter(user=user).first()
    if key is None:
        key, _ = api_key_create(name=f"browser:{user.get_username()}", user=user)
    return key


def completion_request_create(
    *, api_key: ApiKey, served_model: ServedModel, payload: dict[str, Any]
) -> CompletionRequest:
    """Persist a request and, once the row is committed, put it on its model's queue.

    Steps: 1. estimate its cost; 2. insert the row (queued); 3. after commit, publish the task.
    If the broker refuses the task the row is marked failed and DispatchFailed is raised, so no
    request is left queued with no task behind it.
    """
    payload = {**payload, "model": served_model.name}
    output_cap = requested_output_cap(payload) or settings.BALANCER_DEFAULT_OUTPUT_TOKENS
    with transaction.atomic():
        request = CompletionRequest.objects.create(
            api_key=api_key,
            provider=served_model.provider.name,
            model=served_model.name,
            payload=payload,
            estimated_input_tokens=estimate_input_tokens(payload),
            estimated_output_tokens=output_cap,
        )
        # A worker must never see a task for a row it cannot read yet.
        transaction.on_commit(lambda: completion_request_dispatch(request=request))
    return request


def completion_request_dispatch(*, request: CompletionRequest, countdown: float | None = None) -> None:
    from completions.tasks import run_completion

    try:
        run_completion.apply_async(
            kwargs={"request_id": str(request.id)}, queue=request.queue_name, countdown=countdown
        )
    except Exception as exc:
        logger.exception("could not dispatch request %s", request.id)
        _finish(
            request_id=request.id,
            from_status=None,
            status=CompletionStatus.FAILED,
            error={"message": f"the task queue is unavailable: {exc.__class__.__name__}", "transient": True},
        )
        raise DispatchFailed(str(exc)) from exc


def completion_request_cancel(*, request: CompletionRequest) -> bool:
    """Cancel a request that has not started. Returns False when it already has (or has ended)."""
    cancelled = CompletionRequest.objects.filter(
        id=request.id, status=CompletionStatus.QUEUED, started_at__isnull=True
    ).update(status=CompletionStatus.CANCELLED, finished_at=timezone.now())
    if cancelled:
        completion_event_publish(request_id=str(request.id), status=CompletionStatus.CANCELLED)
    request.refresh_from_db()
    return bool(cancelled)


def _finish(*, request_id: uuid.UUID | str, from_status: str | None, status: str, **fields: Any) -> bool:
    """Move a request to a terminal state (compare-and-swap on `from_status`) and announce it."""
    rows = CompletionRequest.objects.filter(id=request_id)
    if from_status is not None:
        rows = rows.filter(status=from_status)
    changed = rows.update(status=status, finished_at=timezone.now(), **fields)
    if changed:
        completion_event_publish(request_id=str(request_id), status=status)
    return bool(changed)


def retry_countdown(*, attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter, never shorter than the upstream's retry-after."""
    cap = min(
        settings.BALANCER_RETRY_BACKOFF_MAX_SECONDS,
        settings.BALANCER_RETRY_BACKOFF_SECONDS * 2 ** (attempt - 1),
    )
    countdown = random.uniform(cap / 2, cap)
    if retry_after is not None:
        countdown = max(countdown, retry_after)
    return countdown


def completion_request_execute(*, request_id: str) -> None:
    """Run one attempt of a request. Safe to call twice for the same message.

    1. Claim the row: queued → running in one UPDATE; if no row changed, the request was
       cancelled, finished, or is being run by another delivery of the same message: stop.
    2. Resolve the provider from the registry (a model removed meanwhile fails the request).
    3. Call the provider, holding no database connection during the call.
    4. Success → succeeded with response and usage. Permanent error → failed, upstream status and
       body passed through. Transient error → back to queued and re-dispatched with backoff,
       until BALANCER_MAX_ATTEMPTS attempts were made; then failed.
    """
    claimed = CompletionRequest.objects.filter(id=request_id, status=CompletionStatus.QUEUED).update(
        status=CompletionStatus.RUNNING,
        attempts=F("attempts") + 1,
        started_at=Coalesce(F("started_at"), Value(timezone.now())),
    )
    if not claimed:
        return
    request = CompletionRequest.objects.get(id=request_id)
    running = CompletionStatus.RUNNING
    config = provider_config_get(provider=request.provider, model=request.model)
    if config is None:
        _finish(
            request_id=request_id,
            from_status=running,
            status=CompletionStatus.FAILED,
            error={"message": f"{request.provider}/{request.model} is no longer served", "transient": False},
        )
        return
    # An upstream call takes seconds; a worker runs a hundred of them at once. Holding a database
    # connection through each would need a hundred connections per worker. (Inside a transaction,
    # as in a caller's atomic block, the connection must stay.)
    if not connection.in_atomic_block:
        connection.close()
    try:
        result = provider_for(config).complete(request.payload)
    except ProviderError as exc:
        if exc.transient and request.attempts < settings.BALANCER_MAX_ATTEMPTS:
            countdown = retry_countdown(attempt=request.attempts, retry_after=exc.retry_after)
            logger.info(
                "request %s attempt %d failed transiently (%s); retrying in %.2f s",
                request_id,
                request.attempts,
                exc.message,
                countdown,
            )
            requeued = CompletionRequest.objects.filter(id=request_id, status=running).update(
                status=CompletionStatus.QUEUED, error=exc.as_error(), upstream_status=exc.status
            )
            if requeued:
                completion_request_dispatch(request=request, countdown=countdown)
            return
        _finish(
            request_id=request_id,
            from_status=running,
            status=CompletionStatus.FAILED,
            error=exc.as_error(),
            upstream_status=exc.status,
        )
        return
    except Exception:
        logger.exception("request %s: provider call raised unexpectedly", request_id)
        _finish(
            request_id=request_id,
            from_status=running,
            status=CompletionStatus.FAILED,
            error={"message": "internal error while calling the provider", "transient": False},
        )
        return
    _finish(
        request_id=request_id,
        from_status=running,
        status=CompletionStatus.SUCCEEDED,
        response=result.body,
        error=None,
        upstream_status=result.status,
        input_tokens=result.input_tokens,
        output_tokens=result.output_tokens,
    )


def worker_heartbeat(*, hostname: str) -> None:
    """Record, in Redis time, that a worker is alive (read by /ready)."""
    r = get_redis()
    seconds, micros = r.time()
    now = seconds + micros / 1e6
    pipe = r.pipeline()
    pipe.zadd(WORKERS_KEY, {hostname: now})
    # Forget workers gone for ten times the staleness bound, so the set does not grow forever.
    pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - 10 * settings.BALANCER_WORKER_STALE_SECONDS)
    pipe.execute()
