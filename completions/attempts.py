"""One attempt of a request, as a short pipeline:

1. acquire — a limited model's line lets only its head start, and only when its buckets hold the
   head's cost (a key's line first moves its head on to the model's line); a group's line also
   says which of its deployments takes it;
2. claim   — queued → running in one compare-and-swap, so a redelivered message is harmless;
3. call    — the provider, holding no database connection; streamed events relayed as they come;
4. outcome — `attempt_outcome` (completions.outcomes, pure) says what happened: succeeded,
   failed, retry after T, cancelled, or on to its group's fallback, with how to settle;
5. apply   — `outcome_plan` (pure) says what applying it does, and `plan_execute`, the one place
   that acts on it, does it: the row (fenced by the attempt's token), then one Redis round trip
   for the settlements (for a retry, re-entering the line in the same Lua step, so nobody
   behind it is woken first), the provider's reported limits, the metrics and the announcement.

Every attempt has a fencing token and, while its call runs, a lease its worker renews
(completions.leases); any error after the claim still ends in step 5.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone
from redis.exceptions import NoScriptError, RedisError

from balancer_project.logs import request_context, request_id_var
from balancer_project.redis_conn import get_redis
from completions import rows
from completions.leases import Held, keeper
from completions.lines import line_acquire, line_enter, line_return, line_settle, run_publish, wake_publish
from completions.listeners import caller_gone
from completions.metrics import record_attempt
from completions.models import (
    CompletionRequest,
    CompletionStatus,
    ModelGroup,
    Operation,
    ServedModel,
    TierAsked,
)
from completions.outcomes import Call, Outcome, Plan, attempt_outcome, outcome_plan
from completions.providers import CompletionResult, Provider, ProviderError, provider_for
from completions.routing import CostExceedsLimit, ModelNotAllowed, Route, flavour_of, request_route
from completions.selectors import deployment_get, deployment_named, model_group_get, provider_config_get
from completions.services import (
    batch_await,
    completion_request_claim,
    completion_request_deliver,
    completion_request_dispatch,
    completion_request_finish,
    completion_requests_expire,
    remaining_wait,
    retry_countdown,
)
from completions.shares import PARK_SECONDS, shares
from completions.sse import Event
from completions.streaming import StreamAccount, stream_append, stream_begin
from completions.tiers import Charge, TierNotOffered, charge_for, flex_unavailable, tier_config, tier_payload
from completions.tokens import text_tokens
from ratelimit import limiter
from ratelimit.limiter import NO_DEPLOYMENT, GrantOutcome, SettleMode, Wake
from ratelimit.lines import group_of_line, is_group_line, is_key_line, key_quota_of

logger = logging.getLogger(__name__)

# A claim the database refused is tried again this much later (from the request's own place).
DATABASE_RETRY_SECONDS = 1.0
# A wake-up that found this worker's share of its model full goes back on its queue this much later.
HAND_ON_SECONDS = 0.25


class StreamCancelled(Exception):
    """The client of a streamed request went away; `result` holds what was streamed so far."""

    def __init__(self, result: CompletionResult) -> None:
        super().__init__("cancelled")
        self.result = result


def completion_request_execute(
    *, request_id: str | None, line: str | None, queue: str | None = None, wake_at: str = ""
) -> None:
    """Run one attempt of a request (see the module docstring). Safe to call twice for the same
    message. A wake-up (`request_id` None) starts whichever request is the head of `line`
    (`wake_at`: the line's record of it). `queue`: the queue the task came from (its model's,
    for a model's share of this worker's threads: completions.shares)."""
    model = None if line is not None and is_key_line(line) else (line or queue)
    # An unlimited model's request (no line to keep its place) is parked when its model is full.
    park = request_id if line is None and queue is not None else None
    release = shares.take_or_park(model, park) if model else _nothing
    if release is None:
        if park is not None and queue is not None:
            # Parked here; this copy runs it should this worker be gone by then.
            run_publish(request_id=park, line=None, queue=queue, countdown=PARK_SECONDS)
        elif request_id is None and line is not None:
            # A wake-up this worker has no thread for is handed on (to any worker of the line's
            # queue), not acknowledged away; still the pending one for its line.
            wake_publish(line=line, wake=Wake(HAND_ON_SECONDS, wake_at))
        # A limited model's request keeps its place in line: its head is woken again.
        return
    try:
        _execute(request_id, line, queue, release, wake_at)
    finally:
        release()
    # This thread's call of `model` is over: it runs the requests parked for that model meanwhile.
    while model is not None and (parked := shares.take_parked(model)) is not None:
        parked_id, release = parked
        try:
            with request_context(parked_id):
                _execute(parked_id, None, model, release)
        except Exception:
            logger.exception("request %s: running it from the park failed", parked_id)
        finally:
            release()


def _nothing() -> None:
    pass


def _execute(
    request_id: str | None,
    line: str | None,
    queue: str | None,
    release: Callable[[], None],
    wake_at: str = "",
) -> None:
    deployment = ""
    # This attempt's fencing token: its grant, claim, writes, settlements and lease carry it.
    token = uuid.uuid4().hex
    if line is not None:
        granted = _acquire(line, request_id, token, wake_at)
        if granted is None:
            return
        request_id, deployment = granted
    assert request_id is not None
    try:
        # A group's request goes where its line sent it (None when that deployment is gone).
        served = deployment_get(deployment_id=deployment) if deployment not in ("", NO_DEPLOYMENT) else None
        admitted = _admit(request_id, line, served, token)
    except Exception as exc:
        # Not claimed (the database refused, locked or restarting; or Redis, handing it on): tried
        # again in a moment — from its own place in line, its reservation returned, rather than
        # holding it until its lease runs out; an unlimited model's, by its task again.
        if line is not None:
            line_return(line=line, request_id=request_id, in_seconds=DATABASE_RETRY_SECONDS, token=token)
        elif queue is not None:
            run_publish(request_id=request_id, line=None, queue=queue, countdown=DATABASE_RETRY_SECONDS)
        transient = isinstance(exc, (OperationalError, InterfaceError, RedisError))
        (logger.warning if transient else logger.exception)(
            "request %s: its claim failed (%s); trying again shortly", request_id, exc
        )
        return
    if admitted is None:
        return
    request, line = admitted
    # Claimed: from here on every path ends in outcome_apply — settled, and run again from its
    # own place or ended with a reason — whatever raises.
    try:
        provider, flavour, timeout, charge = _prepare(request, line, served)
    except Exception as exc:
        outcome_apply(request=request, line=line, outcome=_not_started(request, exc), seconds=None)
        return
    # An upstream call takes seconds; a worker runs a hundred of them at once: no connection is
    # held through it beyond what rows.keeps_connection allows.
    if not rows.keeps_connection():
        connection.close()
    held = keeper.hold(request_id=request_id, token=token, line=line, deployment=deployment, timeout=timeout)
    try:
        call = _call(request, provider, flavour, held)
    finally:
        keeper.release(held)
    release()  # before the settlement: the wake-up it publishes may find this thread's share free
    retry_after = call.error.retry_after if call.error else None
    unavailable = flex_unavailable(call.error, charge.tier)
    decide = functools.partial(
        attempt_outcome,
        call=call,
        unavailable=unavailable,
        then_realtime=unavailable and charge.fallback,
        estimate=(request.estimated_input_tokens, request.estimated_output_tokens),
        attempts=request.attempts,
        left=remaining_wait(request),
        backoff=retry_countdown(attempt=request.attempts, retry_after=retry_after),
        deployments=_choices(request) if line is not None and is_group_line(line) else 1,
    )
    outcome = decide()
    cooled = outcome.health is not None and outcome.health.fault in ("auth", "down")
    if call.error is not None and request.group and (outcome.status == CompletionStatus.FAILED or cooled):
        # About to fail in its group: its group's fallback, if it has one that can take it.
        referred = _fallback_for(request)
        if referred is not None:
            outcome = decide(fallback=referred)
    if call.crashed:
        logger.error("request %s: provider call raised unexpectedly", request_id)
    headers = (call.result.headers if call.result else call.error.headers if call.error else {}) or {}
    outcome_apply(
        request=request,
        line=line,
        outcome=outcome,
        seconds=call.seconds,
        headers=headers,
        deployment=served,
        charge=charge,
    )


class NotServed(Exception):
    """What a claimed request was sent to is no longer served: it fails with this reason."""


def _prepare(
    request: CompletionRequest, line: str | None, served: ServedModel | None
) -> tuple[Provider, str, float, Charge]:
    """Step 2½, after the claim: the provider to call, its flavour, its timeout, and the tier and
    prices this attempt is sent and charged at (as they are now, when it starts: completions.tiers;
    `request.payload` becomes the body for that tier). Raises NotServed (the request fails with
    the reason), or whatever the registry's reads raise."""
    if line is not None and is_group_line(line) and served is None:
        raise NotServed(
            f"No deployment of {group_of_line(line)} that this request may use is served any more."
        )
    left = remaining_wait(request)
    if left is not None and left < 0 and request.attempts == 1 and line is None:
        # An unlimited model's request has no line to let it go at its deadline: it goes here.
        raise DeadlinePassed
    waited = (timezone.now() - request.created_at).total_seconds()
    if request.reply_to and caller_gone(request.reply_to, waited=waited):
        raise CallerGone
    config = provider_config_get(provider=request.provider, model=request.model)
    if config is None:
        raise NotServed(f"{request.provider}/{request.model} is no longer served")
    deployment = served or deployment_named(provider=request.provider, model=request.model)
    try:
        charge = charge_for(
            asked=request.tier,
            priority=request.priority,
            served_tier=request.served_tier,
            deployment=deployment,
            left=left,
        )
    except TierNotOffered as exc:
        raise NotServed(str(exc)) from None
    request.payload = tier_payload(request.payload, charge.tier)
    config = tier_config(config, charge.tier)
    return provider_for(config), flavour_of(config), config.timeout, charge


class DeadlinePassed(Exception):
    """The request waited past its max_wait before its first attempt could start."""


class CallerGone(Exception):
    """The web process that held the request's call open is gone: nobody would read the answer."""


# What ends a claimed request before its call, and how (the exception's own message if None).
_ENDED_BEFORE_THE_CALL: dict[type[Exception], tuple[str, str | None]] = {
    NotServed: (CompletionStatus.FAILED, None),
    CallerGone: (
        CompletionStatus.CANCELLED,
        "Cancelled: the web process holding its call is gone, so no client could read the answer.",
    ),
    DeadlinePassed: (CompletionStatus.EXPIRED, "The request waited in line longer than its max_wait."),
}


def _not_started(request: CompletionRequest, exc: Exception) -> Outcome:
    """What a claimed request comes to when it could not be called at all (nothing was sent
    upstream: everything is given back). No longer served: failed, with the reason. Its deadline
    passed: expired. The database or Redis away for a moment: run again shortly from its own
    place, while attempts remain. Anything else (a bug, a broken registry entry): failed,
    with the reason, rather than left running for the sweeper."""
    ended = _ENDED_BEFORE_THE_CALL.get(type(exc))
    if ended is not None:
        status, message = ended
        return Outcome(
            status=status,
            settle=SettleMode.REFUND,
            error={"message": message or str(exc), "transient": False},
        )
    transient = isinstance(exc, (OperationalError, InterfaceError, RedisError))
    message = f"could not prepare the provider call ({type(exc).__name__}: {exc})"
    if transient and request.attempts < settings.BALANCER_MAX_ATTEMPTS:
        logger.warning("request %s: %s; trying again shortly", request.id, message)
        return Outcome(
            status=CompletionStatus.QUEUED,
            settle=SettleMode.REFUND,
            retry_in=DATABASE_RETRY_SECONDS,
            error={"message": message, "transient": True},
        )
    logger.exception("request %s: %s", request.id, message)
    return Outcome(
        status=CompletionStatus.FAILED,
        settle=SettleMode.REFUND,
        error={"message": f"internal error before calling the provider: {message}", "transient": transient},
    )


def _acquire(line: str, request_id: str | None, token: str, wake_at: str) -> tuple[str, str] | None:
    """Step 1: the id that may start now and the deployment it goes to ("" but on a group's
    line), or None. `token`: the attempt's, kept with its reservation on a model's line."""
    grant = line_acquire(
        line=line, request_id=request_id, token="" if is_key_line(line) else token, wake_at=wake_at
    )
    if grant.expired:
        try:
            completion_requests_expire(request_ids=grant.expired)
        except Exception:  # they left the line; the sweeper ends their rows (queued, in no line)
            logger.warning("could not mark %d requests expired", len(grant.expired), exc_info=True)
    if grant.outcome != GrantOutcome.GO:
        return None
    request_id_var.set(grant.request_id)  # a wake-up runs whichever request is head
    return grant.request_id, grant.deployment


def _fallback_for(request: CompletionRequest) -> tuple[ModelGroup, Route] | None:
    """Where a request its group could not serve goes instead: the group's fallback and its
    route there — once (a request that fell back never falls back again), and only when the
    fallback can take it (its key, its cost, its format). Never raises."""
    if not request.group or request.fallback_from:
        return None
    try:
        group = model_group_get(name=request.group)
        if group is None or group.fallback is None:
            return None
        fallback = model_group_get(name=group.fallback.name)
        served = deployment_named(provider=request.provider, model=request.model)
        if fallback is None or not fallback.deployments_served or served is None:
            return None
        route = request_route(
            key_quota=key_quota_of(request.api_key),
            served_model=served,
            group=fallback,
            payload=request.payload,
            operation=request.operation,
        )
    except (ModelNotAllowed, CostExceedsLimit):
        return None
    except Exception:
        logger.warning("request %s: could not route it to its group's fallback", request.id, exc_info=True)
        return None
    return fallback, route


def _choices(request: CompletionRequest) -> int:
    """How many deployments of its group a request may go to (read after the call: it never
    raises, so an answer already paid for is never lost to it; 1 when it cannot tell)."""
    if request.deployment_ids is not None:
        return len(request.deployment_ids)
    try:
        group = model_group_get(name=request.group)
    except Exception:
        logger.warning("request %s: could not read its group %s", request.id, request.group, exc_info=True)
        return 1
    return len(group.deployments_served) if group is not None else 1


def _admit(
    request_id: str, line: str | None, deployment: ServedModel | None, token: str
) -> tuple[CompletionRequest, str | None] | None:
    """Step 2: a key's line hands its request on (to its model's line, or straight on for an
    unlimited model), then the claim (for a group's request, routed to `deployment`). Returns
    the claimed row and the line it holds a reservation in, or None (handed on, or the claim
    lost: settled here)."""
    if line is not None and is_key_line(line):
        _admitted_by_key(request_id, line)
        return None
    request = completion_request_claim(request_id=request_id, token=token, deployment=deployment)
    if request is None:
        if line is not None:
            line_settle(line=line, request_id=request_id, mode=SettleMode.REFUND, token=token)
        return None
    return request, line


def _admitted_by_key(request_id: str, key: str) -> None:
    """A request its key's quota let through moves on: to its model's line and queue, or, for an
    unlimited model, to its model's queue, where it runs within the model's share of a worker's
    threads like any other."""
    request = (
        CompletionRequest.objects.select_related("api_key")
        .filter(id=request_id, status=CompletionStatus.QUEUED)
        .first()
    )
    if request is None:  # cancelled meanwhile
        line_settle(line=key, request_id=request_id, mode=SettleMode.REFUND)
        return
    if request.tier == TierAsked.BATCH:
        batch_await(request)  # in no line: its provider batch takes it (completions.batching)
        return
    if request.rate_limited and request.line is not None:
        line_enter(
            request=request, line=request.line, max_wait=remaining_wait(request), arrived=timezone.now()
        )
    completion_request_dispatch(request=request)


def _call(request: CompletionRequest, provider: Provider, flavour: str, held: Held) -> Call:
    """Step 3: the provider call, never raising. `held`: its lease (a stream's chunks are its
    progress; a stream whose attempt lost its lease stops)."""
    started = time.monotonic()
    try:
        if request.stream:
            result = _relay_stream(request, provider, flavour, held)
        else:
            result = provider.complete(request.payload, operation=request.operation)
            held.progress()
    except StreamCancelled as cancelled:
        return Call(cancelled=cancelled.result, seconds=time.monotonic() - started)
    except ProviderError as exc:
        return Call(error=exc, seconds=time.monotonic() - started)
    except Exception:
        logger.exception("request %s: provider call raised unexpectedly", request.id)
        return Call(crashed=True, seconds=time.monotonic() - started)
    return Call(result=result, seconds=time.monotonic() - started)


def outcome_apply(
    *,
    request: CompletionRequest,
    line: str | None,
    outcome: Outcome,
    seconds: float | None,
    headers: dict[str, str] | None = None,
    deployment: ServedModel | None = None,
    charge: Charge | None = None,
) -> None:
    """Step 5, the one place an attempt's outcome is acted on: `outcome_plan` says what to do
    (completions.outcomes, pure), `plan_execute` does it."""
    plan = outcome_plan(
        request=request,
        line=line,
        outcome=outcome,
        seconds=seconds,
        headers=headers or {},
        deployment=deployment,
        left=remaining_wait(request),
        charge=charge,
    )
    plan_execute(request=request, plan=plan)


def plan_execute(*, request: CompletionRequest, plan: Plan) -> None:
    """Do what `plan` says, in its order: the row, fenced by the attempt's token — nothing more
    if another attempt owns the request now; then one Redis round trip (the announcement and the
    stream's end, the settlements, the provider's limits, the metrics); then the wake-ups the
    settlements ask for, and the request's next step (its task again, or its fallback's line)."""
    rid = str(request.id)
    token = request.claim
    pipe = get_redis().pipeline(transaction=False)
    if plan.log:
        logger.info("request %s: %s", rid, plan.log)
    if plan.announce is not None:
        announce = plan.announce
        owned = rows.persisting(
            lambda: completion_request_finish(
                request_id=rid,
                from_status=CompletionStatus.RUNNING,
                claim=token,
                status=plan.status,
                pipe=pipe,
                **announce,
                **plan.row,
            ),
            what=f"request {rid}: recording its outcome",
        )
    else:
        owned = rows.persisting(
            lambda: rows.finish(rid, CompletionStatus.RUNNING, claim=token, status=plan.status, **plan.row),
            what=f"request {rid}: queueing it again",
        )
    if not owned:
        # Another attempt owns it now (this one's lease ended and the request runs again), or it
        # ended otherwise meanwhile: its reservation and its outcome are that attempt's to settle.
        logger.warning(
            "request %s: attempt %d no longer owns it; its outcome is dropped", rid, request.attempts
        )
        return
    pending = [
        (
            step.line,
            limiter.settle_in(
                pipe,
                step.line,
                rid,
                mode=step.mode,
                input_tokens=step.input_tokens,
                output_tokens=step.output_tokens,
                retry=step.retry,
                throttled=step.throttled,
                health=step.health,
                token=token if step.fenced else "",
            ),
        )
        for step in plan.settlements
    ]
    adapted = (
        limiter.adapt_in(pipe, plan.adapt.line, plan.adapt.reported, plan.adapt.deployment)
        if plan.adapt
        else None
    )
    if plan.metric is not None:
        record_attempt(**plan.metric, pipe=pipe)
    try:
        replies = pipe.execute(raise_on_error=False)
    except RedisError as exc:
        # The row holds the outcome already. What Redis missed is repaired from the rows: the
        # slot's lease runs out, and a retry that is in no line is put back by the sweeper.
        logger.warning("request %s: Redis was unreachable after its call (%s)", rid, exc)
        return
    for settled_line, settle in pending:
        try:
            wake_publish(line=settled_line, wake=settle.result(replies).wake)
        except Exception:
            logger.warning(
                "request %s: settling %s failed; the sweeper will repair it", rid, settled_line, exc_info=True
            )
    if adapted is not None:
        try:
            adapted.result(replies)
        except Exception:
            logger.warning("request %s: recording the provider's limits failed", rid, exc_info=True)
    for reply in replies:
        if isinstance(reply, Exception) and not isinstance(reply, NoScriptError):
            logger.warning("request %s: a Redis command after the call failed: %s", rid, reply)
    if plan.republish_in is not None:
        # An unlimited model has no line to hold its place: its task comes back after the backoff.
        run_publish(request_id=rid, line=None, queue=request.queue_name, countdown=plan.republish_in)
    if plan.deliver:
        for name, value in plan.row.items():
            setattr(request, name, value)
        request.status = plan.status
        try:
            completion_request_deliver(request=request, waits_for_key=False)
        except Exception:  # queued in no line: the sweeper puts it in its fallback's line
            logger.warning("request %s: could not put it in its fallback's line", rid, exc_info=True)


def _relay_stream(
    request: CompletionRequest, provider: Provider, flavour: str, held: Held
) -> CompletionResult:
    """Call the provider in streaming mode and relay every event to the request's Redis stream as
    it arrives, tagged with this attempt's number. OpenAI streams are always asked for their
    usage (it settles the reservation); the usage-only chunk reaches the client only if it asked
    for it. A failure after the first event cannot be retried (the client has part of an
    answer) and is reported as permanent."""
    payload = dict(request.payload)
    client_wants_usage = True
    if request.operation == Operation.RESPONSES:
        flavour = "responses"  # its own events; their last one carries the usage
    elif flavour == "openai":
        options = dict(payload.get("stream_options") or {})
        client_wants_usage = bool(options.get("include_usage"))
        payload["stream_options"] = {**options, "include_usage": True}
    account = StreamAccount(flavour)
    rid = str(request.id)
    attempt = request.attempts
    relayed = 0

    def result() -> CompletionResult:
        output = account.output_tokens
        if output is None:  # cut off before the usage arrived: estimate from the text
            output = text_tokens("".join(account.text), exact=False)
        return CompletionResult(
            body=account.response(),
            status=200,
            input_tokens=account.input_tokens,
            output_tokens=output,
            cached_input_tokens=account.cached_input_tokens,
        )

    stream_begin(rid, attempt)
    events = provider.stream(payload, operation=request.operation)
    try:
        for event in events:
            held.progress()
            if held.lost:  # run again elsewhere: this attempt's chunks reach nobody
                raise StreamCancelled(result())
            account.feed(event)
            if not client_wants_usage and _usage_only_chunk(event):
                continue
            relayed += 1
            if stream_append(rid, event, attempt):
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
