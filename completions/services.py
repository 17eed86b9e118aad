"""Writes: API keys, submitting, cancelling and executing completion requests."""

from __future__ import annotations

import functools
import logging
import random
import secrets
import time
import uuid
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from redis.exceptions import NoScriptError

from balancer_project.logs import request_id_var
from balancer_project.redis_conn import get_redis
from completions import rows
from completions.events import completion_event_publish
from completions.metrics import record_attempt
from completions.models import ApiKey, CompletionRequest, CompletionStatus, ServedModel
from completions.providers import CompletionResult, Provider, ProviderConfig, ProviderError, provider_for
from completions.selectors import WORKERS_KEY, api_key_hash, provider_config_get
from completions.sse import Event
from completions.streaming import StreamAccount, stream_append, stream_end
from completions.tokens import text_tokens
from ratelimit.services import (
    cost_over_capacity,
    is_key_line,
    key_allows_model,
    key_line,
    key_quota_of,
    key_take,
    line_adapt,
    line_queue,
    quota_get,
    request_acquire,
    request_cost,
    request_enqueue,
    request_leave,
    request_settle,
    request_settle_queue,
)

logger = logging.getLogger(__name__)

KEY_PREFIX = "lb-"


class DispatchFailed(Exception):
    """The broker did not take the task; the request was marked failed."""


class CostExceedsLimit(Exception):
    """The request's estimated cost is larger than its model's bucket: it could never start."""


class ModelNotAllowed(Exception):
    """The client's key may not use this model."""


class KeyRateExceeded(Exception):
    """A fail-fast key is over its rate; `retry_after` seconds until the request would fit."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"Rate limit of this API key reached; retry after {retry_after:.1f} s.")
        self.retry_after = retry_after


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
    *,
    api_key: ApiKey,
    served_model: ServedModel,
    payload: dict[str, Any],
    max_wait: float | None = None,
    reply_to: str = "",
) -> CompletionRequest:
    """Persist a request and, once the row is committed, put it in line and on its queue.
    `reply_to`: the Redis channel its worker sends the result to (completions.waiting).

    Steps:
    1. The key's quota may restrict models (ModelNotAllowed).
    2. Estimate the cost; refuse it (CostExceedsLimit) if it can never fit the model's or the
       key's buckets, rather than let it wait forever.
    3. A fail-fast key over its rate is refused (KeyRateExceeded, with the seconds to wait);
       otherwise its cost is taken now.
    4. Insert the row (queued).
    5. After commit: join the key's line (a key with a rate quota that waits), else the model's
       line (a model with a quota), and publish the task. If the broker refuses the task the
       row is marked failed and DispatchFailed is raised: no request is left queued with
       nothing behind it.
    """
    payload = {**payload, "model": served_model.name}
    key_quota = key_quota_of(api_key)
    if not key_allows_model(key_quota=key_quota, served_model=served_model):
        raise ModelNotAllowed(f"This API key may not use {served_model}.")
    quota = quota_get(served_model=served_model)
    input_tokens, output_tokens = request_cost(served_model=served_model, quota=quota, payload=payload)
    for owner, limits in (("the model's", quota), ("your API key's", key_quota)):
        too_large = cost_over_capacity(
            quota=limits, input_tokens=input_tokens, output_tokens=output_tokens, owner=owner
        )
        if too_large:
            raise CostExceedsLimit(too_large)
    key_limited = key_quota is not None and key_quota.limited
    request_id = uuid.uuid4()
    request_id_var.set(str(request_id))
    if key_limited and key_quota.fail_fast:
        retry_after = key_take(
            api_key_id=api_key.pk,
            request_id=str(request_id),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )
        if retry_after is not None:
            raise KeyRateExceeded(retry_after)
    try:
        # One INSERT commits by itself; inside a caller's transaction, on_commit waits for it.
        request = CompletionRequest(
            id=request_id,
            api_key=api_key,
            provider=served_model.provider.name,
            model=served_model.name,
            payload=payload,
            estimated_input_tokens=input_tokens,
            estimated_output_tokens=output_tokens,
            max_wait=max_wait,
            rate_limited=quota is not None,
            key_limited=key_limited,
            stream=bool(payload.get("stream")),
            reply_to=reply_to,
        )
        rows.insert(request)
        waits_for_key = key_limited and not key_quota.fail_fast
        transaction.on_commit(lambda: _enter_line(request, waits_for_key))
    except DispatchFailed:
        raise
    except Exception:
        if key_limited and key_quota.fail_fast:
            request_settle(line=key_line(api_key.pk), request_id=str(request_id), mode="refund")
        raise
    return request


def _enter_line(request: CompletionRequest, waits_for_key: bool) -> None:
    """After commit: the first line a request waits in, and its first task."""
    # A worker must never see a task for a row it cannot read yet.
    try:
        if waits_for_key:
            line = key_line(request.api_key_id)
            request_enqueue(request=request, line=line, max_wait=request.max_wait)
            completion_request_dispatch(request=request, line=line)
            return
        if request.rate_limited:
            request_enqueue(request=request, line=request.line, max_wait=request.max_wait)
    except DispatchFailed:
        raise
    except Exception as exc:
        _dispatch_failed(request, exc)
    completion_request_dispatch(request=request)


def completion_request_dispatch(
    *, request: CompletionRequest, countdown: float | None = None, line: str | None = None
) -> None:
    """Publish a request's task: on its model's queue for its model's line (or none), or on the
    default queue for its key's line."""
    from completions.tasks import run_completion

    line = line or request.line
    kwargs = {"request_id": str(request.id), "line": line}
    try:
        run_completion.apply_async(
            kwargs=kwargs,
            queue=line_queue(line) if line else request.queue_name,
            countdown=countdown,
            # Celery would build these with its safe repr, a tenth of a publish's CPU.
            argsrepr="()",
            kwargsrepr=repr(kwargs),
        )
    except Exception as exc:
        _dispatch_failed(request, exc)


def _dispatch_failed(request: CompletionRequest, exc: Exception) -> None:
    logger.exception("could not dispatch request %s", request.id)
    completion_request_finish(
        request_id=request.id,
        from_status=None,
        status=CompletionStatus.FAILED,
        error={"message": f"the task queue is unavailable: {exc.__class__.__name__}", "transient": True},
    )
    raise DispatchFailed(str(exc)) from exc


def completion_request_cancel(*, request: CompletionRequest) -> bool:
    """Cancel a request that has not started; it leaves its line. Returns False when it already
    has started (or has ended)."""
    cancelled = CompletionRequest.objects.filter(
        id=request.id, status=CompletionStatus.QUEUED, started_at__isnull=True
    ).update(status=CompletionStatus.CANCELLED, finished_at=timezone.now())
    request.refresh_from_db()
    if cancelled:
        if request.key_limited:
            request_leave(line=key_line(request.api_key_id), request_id=str(request.id))
            request_settle(line=key_line(request.api_key_id), request_id=str(request.id), mode="refund")
        if request.line is not None:
            request_leave(line=request.line, request_id=str(request.id))
        if request.stream:
            stream_end(str(request.id), CompletionStatus.CANCELLED)
        completion_event_publish(request_id=str(request.id), status=CompletionStatus.CANCELLED)
    return bool(cancelled)


def completion_requests_expire(*, request_ids: list[str]) -> None:
    """Requests that waited in line past their max_wait (they have already left the line)."""
    flags = CompletionRequest.objects.filter(id__in=request_ids).values_list(
        "id", "stream", "key_limited", "api_key_id"
    )
    streams = {str(i) for i, stream, _, _ in flags if stream}
    for request_uuid, _, key_limited, api_key_id in flags:
        if key_limited:  # its key's reservation, if the key had let it through already
            request_settle(line=key_line(api_key_id), request_id=str(request_uuid), mode="refund")
    for request_id in request_ids:
        completion_request_finish(
            request_id=request_id,
            from_status=CompletionStatus.QUEUED,
            status=CompletionStatus.EXPIRED,
            stream=request_id in streams,
            error={"message": "The request waited in line longer than its max_wait.", "transient": False},
        )


def completion_request_finish(
    *,
    request_id: uuid.UUID | str,
    from_status: str | None,
    status: str,
    stream: bool = False,
    reply_to: str = "",
    queue_seconds: float | None = None,
    reply_text: str | None = None,
    pipe: Any = None,
    **fields: Any,
) -> bool:
    """Move a request to a terminal state (compare-and-swap on `from_status`) and announce it
    (and close its event stream, for a streamed request). With `reply_to`, the result goes to
    that channel too, so the waiting web process need not read the row (`reply_text`: the
    response as the upstream encoded it, sent instead of encoding it again). With `pipe`, the
    announcements join that Redis pipeline, which the caller executes."""
    changed = rows.finish(request_id, from_status, status=status, finished_at=timezone.now(), **fields)
    if changed:
        logger.info(
            "request %s %s (upstream status %s, waited %s s)",
            request_id,
            status,
            fields.get("upstream_status") or "-",
            "-" if queue_seconds is None else f"{queue_seconds:.3f}",
        )
        if stream:
            stream_end(str(request_id), status, fields.get("error"))
        result = None
        if reply_to and not stream:
            result = {
                "error": fields.get("error"),
                "upstream_status": fields.get("upstream_status"),
                "queue_seconds": queue_seconds,
            }
            if reply_text is None:
                result["response"] = fields.get("response")
        completion_event_publish(
            request_id=str(request_id),
            status=status,
            reply_to=reply_to,
            result=result,
            body=reply_text,
            pipe=pipe,
        )
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


def remaining_wait(request: CompletionRequest) -> float | None:
    """What is left of a request's max_wait (None: it has none)."""
    if request.max_wait is None:
        return None
    return request.max_wait - (timezone.now() - request.created_at).total_seconds()


def _admitted_by_key(request_id: str, key: str) -> bool:
    """A request its key's quota let through moves on to its model's line and queue. Returns True
    when its model is unlimited, so it may run at once."""
    request = CompletionRequest.objects.filter(id=request_id, status=CompletionStatus.QUEUED).first()
    if request is None:  # cancelled meanwhile
        request_settle(line=key, request_id=request_id, mode="refund")
        return False
    if not request.rate_limited:
        return True
    remaining = remaining_wait(request)
    request_enqueue(request=request, line=request.line, max_wait=remaining)
    completion_request_dispatch(request=request)
    return False


def completion_request_execute(*, request_id: str | None, line: str | None) -> None:
    """Run one attempt of a request. Safe to call twice for the same message.

    0. Key line (`line` is a key's): the key's quota lets its head through to the model's line.
    1. Limited model (`line` set): ask the line. Only its head may start, and only when the
       buckets hold its cost; otherwise the limiter parks this task or schedules the head's
       wake-up, and we stop here. A wake-up (`request_id` None) starts whichever request is head.
    2. Claim the row: queued → running in one UPDATE; if no row changed, the request was
       cancelled, finished, or is being run by another delivery of the same message: stop (and
       give back what step 1 took).
    3. Resolve the provider from the registry (a model removed meanwhile fails the request).
    4. Call the provider, holding no database connection during the call.
    5. Success → succeeded, usage settled against the reservation. Permanent error → failed,
       upstream status and body passed through. Transient error → back to queued (and back to
       its own place in line) with backoff, until BALANCER_MAX_ATTEMPTS attempts; then failed.
    """
    if line is not None:
        request_id = request_acquire(line=line, request_id=request_id)
        if request_id is None:
            return
        request_id_var.set(request_id)  # a wake-up runs whichever request is head
        if is_key_line(line):
            if not _admitted_by_key(request_id, line):
                return
            line = None  # an unlimited model: straight on to the upstream
    assert request_id is not None
    request = completion_request_claim(request_id=request_id)
    if request is None:
        if line is not None:
            request_settle(line=line, request_id=request_id, mode="refund")
        return
    running = CompletionStatus.RUNNING

    def settle(
        mode: str, result: CompletionResult | None = None, final: bool = True, pipe: Any = None
    ) -> Any:
        """Settle the reservations (the key's only at the end) in one round trip; returns the
        request's ticket in its model's line. With `pipe`: queued in the caller's pipeline, and
        returns the function that, given its results, finishes the settlement and returns the
        ticket."""
        # Without a usage report, the reservation stands as the best estimate.
        used_in, used_out = _used(request, result)
        lines = ([key_line(request.api_key_id)] if final and request.key_limited else []) + (
            [line] if line is not None else []
        )
        own = pipe is None
        if own:
            pipe = get_redis().pipeline(transaction=False)
        readers = [
            request_settle_queue(
                pipe, line=x, request_id=request_id, mode=mode, input_tokens=used_in, output_tokens=used_out
            )
            for x in lines
        ]

        def done(replies: list[Any]) -> int | None:
            tickets = [read(replies) for read in readers]
            return tickets[-1] if line is not None else None

        return done(pipe.execute(raise_on_error=False)) if own else done

    config = provider_config_get(provider=request.provider, model=request.model)
    if config is None:
        settle("refund")
        completion_request_finish(
            request_id=request_id,
            from_status=running,
            status=CompletionStatus.FAILED,
            error={"message": f"{request.provider}/{request.model} is no longer served", "transient": False},
        )
        return
    # An upstream call takes seconds; a worker runs a hundred of them at once: no connection is
    # held through it beyond what rows.keeps_connection allows.
    if not rows.keeps_connection():
        connection.close()
    finish = functools.partial(
        completion_request_finish,
        request_id=request_id,
        from_status=running,
        stream=request.stream,
        reply_to=request.reply_to,
        queue_seconds=request.queue_seconds,
    )
    called_at = time.monotonic()

    def observe(
        status: int | None,
        result: CompletionResult | None = None,
        retried: bool = False,
        headers: dict[str, str] | None = None,
        pipe: Any = None,
    ) -> Any:
        """Metrics for the attempt, and the provider's own limits for the model's line. Returns
        the function that checks the reply of the latter when it was queued in `pipe`."""
        adapted = line_adapt(line=line, headers=headers or {}, pipe=pipe) if line is not None else None
        first = request.attempts == 1 and request.claimed_at is not None
        record_attempt(
            model=f"{request.provider}/{request.model}",
            status=status,
            upstream_seconds=time.monotonic() - called_at,
            queue_seconds=(request.claimed_at - request.created_at).total_seconds() if first else None,
            input_tokens=result.input_tokens if result else None,
            output_tokens=result.output_tokens if result else None,
            retried=retried,
            pipe=pipe,
        )
        return adapted

    try:
        provider = provider_for(config)
        if request.stream:
            result = _relay_stream(request, provider, flavour_of(config))
        else:
            result = provider.complete(request.payload)
    except StreamCancelled as cancelled:
        observe(499, cancelled.result)
        settle("usage", cancelled.result)
        finish(
            status=CompletionStatus.CANCELLED,
            response=cancelled.result.body,
            input_tokens=cancelled.result.input_tokens,
            output_tokens=cancelled.result.output_tokens,
            error={"message": "The client went away; the upstream call was aborted.", "transient": False},
        )
        return
    except ProviderError as exc:
        # Never processed upstream (no answer, throttled, overloaded): everything comes back.
        # Refused (4xx): the request counted, its tokens did not. A 5xx: unknown, keep it all.
        countdown = retry_countdown(attempt=request.attempts, retry_after=exc.retry_after)
        left = remaining_wait(request)
        # Retry only within the request's deadline: a backoff past it fails now, with the reason.
        retry = (
            exc.transient
            and request.attempts < settings.BALANCER_MAX_ATTEMPTS
            and (left is None or countdown < left)
        )
        observe(exc.status, retried=retry, headers=exc.headers)
        if exc.status is None or exc.status in (429, 529):
            ticket = settle("refund", final=not retry)
        elif 400 <= exc.status < 500:
            ticket = settle("tokens", final=not retry)
        else:
            ticket = settle("keep", final=not retry)
        if retry:
            _retry_later(request, exc, ticket, countdown)
            return
        finish(status=CompletionStatus.FAILED, error=exc.as_error(), upstream_status=exc.status)
        return
    except Exception:
        logger.exception("request %s: provider call raised unexpectedly", request_id)
        settle("refund")
        finish(
            status=CompletionStatus.FAILED,
            error={"message": "internal error while calling the provider", "transient": False},
        )
        return
    # The row first (a woken waiter may read it); then one Redis round trip: the settlements,
    # the metrics and the announcements.
    pipe = get_redis().pipeline(transaction=False)
    settled = settle("usage", result, pipe=pipe)
    adapted = observe(result.status, result, headers=result.headers, pipe=pipe)
    finish(
        status=CompletionStatus.SUCCEEDED,
        response=result.body,
        error=None,
        upstream_status=result.status,
        input_tokens=result.input_tokens,
        output_tokens=result.output_tokens,
        reply_text=result.text,
        pipe=pipe,
    )
    replies = pipe.execute(raise_on_error=False)
    settled(replies)
    if adapted is not None:
        adapted(replies)
    for reply in replies:
        if isinstance(reply, Exception) and not isinstance(reply, NoScriptError):
            logger.warning("request %s: a Redis command after the call failed: %s", request_id, reply)


def _used(request: CompletionRequest, result: CompletionResult | None) -> tuple[int, int]:
    """Tokens a request used: its usage report, else its reservation (the best estimate)."""
    used_in = (
        result.input_tokens if result and result.input_tokens is not None else request.estimated_input_tokens
    )
    used_out = (
        result.output_tokens
        if result and result.output_tokens is not None
        else request.estimated_output_tokens
    )
    return used_in, used_out


def completion_request_claim(*, request_id: str) -> CompletionRequest | None:
    """queued → running (compare-and-swap), counting the attempt; returns the claimed row, or
    None when another delivery, a cancel or the end came first. Where the database can (SQLite
    3.35+, PostgreSQL) the update returns the row, so a claim is one statement."""
    now = timezone.now()
    if rows.returning_supported():
        return rows.claim(request_id, now)
    claimed = CompletionRequest.objects.filter(id=request_id, status=CompletionStatus.QUEUED).update(
        status=CompletionStatus.RUNNING,
        attempts=F("attempts") + 1,
        started_at=Coalesce(F("started_at"), Value(now)),
        claimed_at=now,
    )
    return CompletionRequest.objects.get(id=request_id) if claimed else None


class StreamCancelled(Exception):
    """The client of a streamed request went away; `result` holds what was streamed so far."""

    def __init__(self, result: CompletionResult) -> None:
        super().__init__("cancelled")
        self.result = result


def flavour_of(config: ProviderConfig) -> str:
    """The wire format a provider speaks for a model: "openai" or "anthropic"."""
    return _flavour(config.kind, config.option("format"))


def flavour_of_model(served: ServedModel) -> str:
    return _flavour(served.provider.kind, {**served.provider.options, **served.options}.get("format"))


def _flavour(kind: str, mock_format: Any) -> str:
    if kind == "mock":
        return "anthropic" if mock_format == "anthropic" else "openai"
    return "anthropic" if kind == "anthropic" else "openai"


def _relay_stream(request: CompletionRequest, provider: Provider, flavour: str) -> CompletionResult:
    """Call the provider in streaming mode and relay every event to the request's Redis stream as
    it arrives. OpenAI streams are always asked for their usage (it settles the reservation);
    the usage-only chunk reaches the client only if it asked for it. A failure after the first
    event cannot be retried (the client has part of an answer) and is reported as permanent."""
    payload = dict(request.payload)
    client_wants_usage = True
    if flavour == "openai":
        options = dict(payload.get("stream_options") or {})
        client_wants_usage = bool(options.get("include_usage"))
        payload["stream_options"] = {**options, "include_usage": True}
    account = StreamAccount(flavour)
    rid = str(request.id)
    relayed = 0

    def result() -> CompletionResult:
        output = account.output_tokens
        if output is None:  # cut off before the usage arrived: estimate from the text
            output = text_tokens("".join(account.text), exact=False)
        return CompletionResult(
            body=account.response(), status=200, input_tokens=account.input_tokens, output_tokens=output
        )

    events = provider.stream(payload)
    try:
        for event in events:
            account.feed(event)
            if not client_wants_usage and _usage_only_chunk(event):
                continue
            relayed += 1
            if stream_append(rid, event):
                raise StreamCancelled(result())
    except ProviderError as exc:
        if relayed:
            exc.transient = False
        raise
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()
    return result()


def _usage_only_chunk(event: Event) -> bool:
    return event.data.startswith("{") and '"choices":[]' in event.data.replace(" ", "")


def _retry_later(
    request: CompletionRequest, exc: ProviderError, ticket: int | None, countdown: float
) -> None:
    logger.info(
        "request %s attempt %d failed transiently (%s); retrying in %.2f s",
        request.id,
        request.attempts,
        exc.message,
        countdown,
    )
    requeued = CompletionRequest.objects.filter(id=request.id, status=CompletionStatus.RUNNING).update(
        status=CompletionStatus.QUEUED, error=exc.as_error(), upstream_status=exc.status
    )
    if not requeued:
        return
    if request.line is None:
        completion_request_dispatch(request=request, countdown=countdown)
        return
    remaining = remaining_wait(request)
    # Back to its own place at the front of the line; the head's wake-up runs it after the backoff.
    request_enqueue(request=request, line=request.line, ticket=ticket, delay=countdown, max_wait=remaining)


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
