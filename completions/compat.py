"""Drop-in endpoints for the official SDKs: OpenAI's `POST /v1/chat/completions` and
`GET /v1/models`, Anthropic's `POST /v1/messages` and `POST /v1/messages/count_tokens`.

They go through the same pipeline as /api/v1/completions (a persisted request, the model's queue,
its rate-limit line). The HTTP call is held open, on the event loop, until the answer is ready
(up to BALANCER_COMPAT_MAX_WAIT_SECONDS), so a request that waited its turn looks to the SDK
like one slow success, never a 429 it would retry on its own. Errors come in each API's own
format, with `x-should-retry: false` where the balancer has already retried.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

from django.conf import settings
from django.http import HttpResponse, HttpResponseBase, JsonResponse, StreamingHttpResponse
from drf_spectacular.utils import extend_schema_view
from rest_framework import exceptions
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from completions.authentication import ApiKeyAuthentication, HasApiKey, api_key_of
from completions.compat_schema import MODELS_LIST, MODELS_RETRIEVE, compat_submit_schema
from completions.errors import compat_error_body, compat_error_response, flatten_detail, retry_after_headers
from completions.models import (
    TERMINAL_STATUSES,
    ApiKey,
    CompletionRequest,
    CompletionStatus,
    ModelGroup,
    Operation,
    Priority,
    ServedModel,
    TierAsked,
)
from completions.routing import (
    CostExceedsLimit,
    ModelNotAllowed,
    deployments_for,
    flavour_of_model,
    key_may_send,
    unavailable_reason,
)
from completions.selectors import (
    completion_request_place,
    model_group_get,
    model_groups_served,
    served_models_for,
    served_models_list,
    served_models_named,
)
from completions.services import (
    InvalidPayload,
    KeyRateExceeded,
    LimiterUnavailable,
    PriorityNotAllowed,
    completion_request_cancel,
    completion_request_create,
)
from completions.spend import BudgetExceeded
from completions.sse import Event
from completions.streaming import cancel_request_async, stream_entries
from completions.tiers import TierNotOffered, asked_tier
from completions.tokens import embedding_input_problem, estimate_input_tokens
from completions.waiting import Pending, ReplyTicket, on_db_pool, reply_ticket, wait_for_result, wait_slots
from completions.workers import UNAVAILABLE, callable_providers
from ratelimit.lines import key_quota_of, key_rate_headers

NO_RETRY = {"x-should-retry": "false"}


def resolve_model(name: Any, flavour: str) -> tuple[ServedModel, ModelGroup | None] | None:
    """The served model a compatible request names, and the group it is sent to: a model
    group's name first (any of its deployments of this API's format), else `model` alone when
    exactly one provider of this format serves it, else `provider/model`."""
    if not isinstance(name, str) or not name:
        return None
    group = model_group_get(name=name)
    if group is not None:
        members = [m for m in group.deployments_served if flavour_of_model(m) == flavour]
        if members:
            return members[0], group
    candidates = [m for m in served_models_named(name) if flavour_of_model(m) == flavour]
    exact = [m for m in candidates if m.name == name]
    if len(exact) == 1:
        return exact[0], None
    qualified = [m for m in candidates if f"{m.provider.name}/{m.name}" == name]
    return (qualified[0], None) if qualified else None


class CompatApi(APIView):
    """Shared by the OpenAI and Anthropic endpoints: only API keys, errors in the API's format."""

    flavour = "openai"
    operation = Operation.CHAT
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [HasApiKey]
    renderer_classes = [JSONRenderer]

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
            return self.error(401, str(exc.detail))
        if isinstance(exc, exceptions.APIException):
            return self.error(exc.status_code, "; ".join(flatten_detail(exc.detail)))
        raise exc

    def error(
        self, status: int, message: str, headers: dict[str, str] | None = None, kind: str = "", **more: Any
    ) -> Response:
        body = compat_error_body(self.flavour, status, message, kind, **more)
        return Response(body, status=status, headers=headers)

    def body_and_model(self, request: Request) -> tuple[dict[str, Any], ServedModel, ModelGroup | None]:
        """The JSON object body, the served model it names and the group it is sent to (else
        400 / 404)."""
        body = request.data
        if not isinstance(body, dict):
            raise exceptions.ValidationError("The request body must be a JSON object.")
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise exceptions.ValidationError("model: a model name (a string) is required.")
        return body, *self.model_named(request, name)

    def model_named(self, request: Request, name: str) -> tuple[ServedModel, ModelGroup | None]:
        """The served model `name` resolves to for this API and key, else 404: one it may not use
        is answered as one that does not exist; one served only in the other API's format is
        refused with where it is served."""
        api_key = api_key_of(request)

        def usable(found: tuple[ServedModel, ModelGroup | None] | None) -> bool:
            return found is not None and key_may_send(api_key=api_key, served_model=found[0], group=found[1])

        resolved = resolve_model(name, self.flavour)
        if resolved is not None and usable(resolved):
            return resolved
        other = "anthropic" if self.flavour == "openai" else "openai"
        if usable(resolve_model(name, other)):
            here = [m["id"] for m in models_described(api_key, self.flavour)]
            where = (
                "/v1/messages (the Anthropic SDK)"
                if other == "anthropic"
                else "/v1/chat/completions (the OpenAI SDK)"
            )
            raise exceptions.NotFound(
                f"The model {name!r} speaks {FORMAT_NAMES[other]} format: call it at {where}. "
                f"Here: {', '.join(here[:20]) or 'none'}{'…' if len(here) > 20 else ''}."
            )
        raise exceptions.NotFound(f"The model {name!r} is not served here.")

    def submit(self, request: Request) -> Response:
        api_key = api_key_of(request)
        body, served, group = self.body_and_model(request)
        if self.operation == Operation.EMBEDDINGS:
            problem = embedding_input_problem(body.get("input"))
            if problem:
                raise exceptions.ValidationError(problem)
            if body.get("stream"):
                raise exceptions.ValidationError("stream: embeddings are not streamed.")
        if self.flavour == "anthropic" and body.get("max_tokens") is None:
            raise exceptions.ValidationError("max_tokens: a whole number of tokens is required.")
        unavailable = unavailable_reason(api_key=api_key, served_model=served, group=group)
        if unavailable is not None:
            # Refused up front (the SDKs would retry a 503 by themselves: told not to).
            return self.error(503, f"{served if group is None else group.name}: {unavailable}", NO_RETRY)
        # A compatible call waits for its answer: a slot first, so a refusal writes nothing.
        release = wait_slots.take_for(api_key)
        if release is None:
            return self.error(
                429,
                "This API key has as many calls waiting on this server as it may; retry when some have "
                "been answered.",
                retry_after_headers(settings.BALANCER_KEY_QUEUE_FULL_RETRY_SECONDS),
            )
        response: Response | None = None
        try:
            response = self._submit(request, api_key, body, served, group)
            return response
        finally:
            if isinstance(response, Pending):
                response.hold(release)
            else:
                release()

    def _submit(
        self,
        request: Request,
        api_key: ApiKey,
        body: dict[str, Any],
        served: ServedModel,
        group: ModelGroup | None,
    ) -> Response:
        # Its worker sends a plain answer to this process's reply channel; for either kind, the
        # channel also says which process holds the call (completions.listeners).
        ticket = reply_ticket()
        # The balancer's own header, never sent upstream (only the body is).
        priority = request.headers.get("x-balancer-priority", Priority.DEFAULT).strip().lower()
        if priority not in Priority.values:
            raise exceptions.ValidationError(
                f"x-balancer-priority must be one of {', '.join(Priority.values)}, not {priority!r}."
            )
        try:
            tier = asked_tier(request.headers.get("x-balancer-tier"), body, name="x-balancer-tier")
        except ValueError as exc:
            raise exceptions.ValidationError(str(exc)) from None
        if tier == TierAsked.BATCH:
            raise exceptions.ValidationError(
                "x-balancer-tier: batch is for work nobody waits on: send it to /api/v1/completions, "
                "or through the Batch API (/v1/batches, /v1/messages/batches)."
            )
        try:
            obj = completion_request_create(
                api_key=api_key,
                served_model=served,
                payload=body,
                # Its deadline: the longest the call is held open. Past it the line itself lets
                # it go (expired, never called upstream), should this process be gone by then.
                max_wait=settings.BALANCER_COMPAT_MAX_WAIT_SECONDS,
                reply_to=ticket.channel if ticket is not None else "",
                group=group,
                priority=priority,
                operation=self.operation,
                tier=tier,
            )
        except (InvalidPayload, CostExceedsLimit, TierNotOffered) as exc:
            raise exceptions.ValidationError(str(exc)) from None
        except (ModelNotAllowed, PriorityNotAllowed) as exc:
            return self.error(403, str(exc))
        except KeyRateExceeded as exc:
            headers = retry_after_headers(exc.retry_after)
            headers.update(key_rate_headers(api_key_id=api_key.pk, key_quota=key_quota_of(api_key)))
            return self.error(429, str(exc), headers)
        except LimiterUnavailable:
            return self.error(
                503,
                "This key's rate cannot be checked right now; the request was not queued.",
                retry_after_headers(1.0),
            )
        except BudgetExceeded as exc:
            # Not before the period resets: the SDKs are told not to try again by themselves.
            headers = {**retry_after_headers(exc.retry_after), "x-should-retry": "false"}
            return self.error(429, str(exc), headers, kind="budget_exceeded", reset_at=exc.reset_at)
        limited_key = api_key if key_quota_of(api_key) is not None else None
        flavour = self.flavour
        return Pending(lambda: answer(obj, flavour, limited_key, None if obj.stream else ticket))


async def answer(
    obj: CompletionRequest, flavour: str, limited_key: ApiKey | None = None, ticket: ReplyTicket | None = None
) -> HttpResponseBase:
    """The final response; with the caller's x-ratelimit-* headers when its key has a quota."""
    response = await (answer_stream(obj, flavour) if obj.stream else answer_plain(obj, flavour, ticket))
    if limited_key is not None:
        headers = await on_db_pool(key_rate_headers)(
            api_key_id=limited_key.pk, key_quota=key_quota_of(limited_key)
        )
        for name, value in headers.items():
            response[name] = value
    return response


async def answer_plain(
    obj: CompletionRequest, flavour: str, ticket: ReplyTicket | None = None
) -> HttpResponse:
    request_id = str(obj.id)
    try:
        result = await wait_for_result(request_id, settings.BALANCER_COMPAT_MAX_WAIT_SECONDS, ticket)
    except asyncio.CancelledError:
        await _client_gone(obj)
        raise
    if result is None:  # not sent to this process (or missed): the row has it
        await on_db_pool(_past_deadline)(obj)
        result = outcome_of(obj)
    return final_response(result, flavour)


def _past_deadline(obj: CompletionRequest) -> None:
    """The call's deadline passed (its 504 goes out now): a request still waiting leaves the line
    for good — nobody will read its answer; one already running finishes, to be fetched by id.
    `obj` is refreshed to what it is now."""
    obj.refresh_from_db()
    if obj.status == CompletionStatus.QUEUED:
        completion_request_cancel(request=obj, reason=DEADLINE_CANCEL, retries_too=True)


DEADLINE_CANCEL = (
    "Cancelled: it was still waiting when its compatible call's deadline "
    "(BALANCER_COMPAT_MAX_WAIT_SECONDS) passed; nothing more is sent upstream."
)


def outcome_of(obj: CompletionRequest) -> dict[str, Any]:
    """A request's outcome, in the shape its worker sends it to the reply channel."""
    return {
        "id": str(obj.id),
        "status": obj.status,
        "response": obj.response,
        "error": obj.error,
        "upstream_status": obj.upstream_status,
        "queue_seconds": obj.queue_seconds,
        "deployment": f"{obj.provider}/{obj.model}" if obj.attempts else "",
        "cost": None if obj.cost is None else str(obj.cost),
    }


def final_response(outcome: dict[str, Any], flavour: str) -> HttpResponse:
    status, error, upstream_status = outcome["status"], outcome["error"] or {}, outcome["upstream_status"]
    headers = {"x-request-id": outcome["id"], "x-queue-seconds": f"{outcome['queue_seconds'] or 0:.3f}"}
    if outcome.get("deployment"):  # the provider/model that answered (in a group, the one chosen)
        headers["x-balancer-deployment"] = outcome["deployment"]
    if outcome.get("cost") is not None:  # US dollars, at its deployment's prices (completions.spend)
        headers["x-balancer-cost"] = outcome["cost"]
    if status == CompletionStatus.SUCCEEDED:
        if outcome.get("body") is not None:  # as the upstream encoded it: sent on as it is
            return HttpResponse(outcome["body"], content_type="application/json", headers=headers)
        return JsonResponse(outcome["response"], headers=headers)
    headers.update(NO_RETRY)  # the balancer has retried already, or retrying cannot help
    if error.get("type") == "budget_exceeded":  # refused when it was put in line (the outbox)
        headers.update(retry_after_headers(error.get("retry_after") or 1))
        body = compat_error_body(
            flavour, 429, error["message"], "budget_exceeded", reset_at=error.get("reset_at")
        )
        return JsonResponse(body, status=429, headers=headers)
    if status == CompletionStatus.FAILED and upstream_status and isinstance(error.get("upstream"), dict):
        return JsonResponse(error["upstream"], status=upstream_status, headers=headers)
    code, message = unsuccessful(outcome)
    return compat_error_response(flavour, code, message, headers)


def unsuccessful(outcome: dict[str, Any]) -> tuple[int, str]:
    """The status and message a request that did not succeed (or has not yet) is answered with."""
    status, error, upstream_status = outcome["status"], outcome["error"] or {}, outcome["upstream_status"]
    waited = f"{settings.BALANCER_COMPAT_MAX_WAIT_SECONDS:g} s"
    if status == CompletionStatus.FAILED:
        return upstream_status or 502, error.get("message", "The upstream call failed.")
    if status == CompletionStatus.EXPIRED or error.get("message") == DEADLINE_CANCEL:
        return 504, (
            f"The request waited in line for {waited}, this endpoint's deadline, without starting; "
            "it was not sent upstream."
        )
    if status == CompletionStatus.CANCELLED:
        return 409, error.get("message") or "The request was cancelled."
    return 504, (
        f"Still {status} after {waited}, this endpoint's deadline: it runs to its end; "
        f"fetch the result from /api/v1/completions/{outcome['id']}."
    )


async def _client_gone(obj: CompletionRequest) -> None:
    """The client disconnected: a waiting request leaves the line; a running stream is aborted."""
    cancelled = await on_db_pool(completion_request_cancel)(request=obj)
    if not cancelled and obj.stream and obj.status not in TERMINAL_STATUSES:
        await cancel_request_async(str(obj.id))


async def _queued_comment(obj: CompletionRequest) -> bytes:
    """The SSE comment a stream waiting in line sends: its place, when it is known."""
    place = await on_db_pool(completion_request_place)(request=obj)
    if place is None:
        return b": queued\n\n"
    return (
        f": queued position={place['position']} estimated_wait={place['estimated_wait_seconds']:.1f}s "
        f"estimated_start={place['estimated_start']}\n\n"
    ).encode()


async def answer_stream(obj: CompletionRequest, flavour: str) -> HttpResponseBase:
    """Wait for the first event (the request may wait its turn first); then stream. A request that
    ends before its first event, within the first keep-alive interval, gets an ordinary error
    response with the right status. One that is still waiting then gets its 200 and an SSE comment
    line (`: queued`, which the SDKs ignore) every BALANCER_STREAM_KEEPALIVE_SECONDS until its
    first event, and `: keep-alive` whenever the upstream pauses that long: proxies that close
    idle connections (nginx, cloud load balancers: 60 s) keep it open. From then on an error is
    an error event in the stream."""
    request_id = str(obj.id)
    entries = stream_entries(
        request_id,
        idle_timeout=settings.BALANCER_COMPAT_MAX_WAIT_SECONDS,
        keepalive=settings.BALANCER_STREAM_KEEPALIVE_SECONDS,
    )
    try:
        first = await entries.__anext__()
    except asyncio.CancelledError:
        await _client_gone(obj)
        raise
    if "end" in first:
        if first["end"] == "timeout":
            await on_db_pool(_past_deadline)(obj)
        else:
            await on_db_pool(obj.refresh_from_db)()
        return final_response(outcome_of(obj), flavour)

    async def events() -> AsyncIterator[bytes]:
        finished = False
        started = False
        try:
            entry: dict[str, str] | None = first
            while entry is not None:
                if "keepalive" in entry:
                    yield b": keep-alive\n\n" if started else await _queued_comment(obj)
                elif "end" in entry:
                    finished = True
                    if entry["end"] == "timeout" and not started:
                        # Its deadline passed before its first event: out of line for good, or
                        # (already running) left to finish and be fetched by id.
                        await on_db_pool(_past_deadline)(obj)
                        _, message = unsuccessful(outcome_of(obj))
                        entry = {"end": obj.status, "error": json.dumps({"message": message})}
                    if entry["end"] != CompletionStatus.SUCCEEDED:
                        yield error_event(flavour, entry)
                    if entry.get("cost"):  # what x-balancer-cost says of a plain answer
                        yield f": x-balancer-cost {entry['cost']}\n\n".encode()
                    return
                else:
                    started = True
                    yield Event(data=entry["d"], event=entry.get("e", "")).encode()
                entry = await entries.__anext__()
        finally:
            if not finished:
                await _client_gone(obj)

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx passes each event (and keep-alive) on at once
    response["x-request-id"] = request_id
    response["x-queue-seconds"] = f"{time.time() - obj.created_at.timestamp():.3f}"
    return response


def error_event(flavour: str, entry: dict[str, str]) -> bytes:
    error = json.loads(entry.get("error") or "{}")
    message = error.get("message") or f"The request ended {entry['end']}."
    if flavour == "anthropic":
        data = {"type": "error", "error": {"type": "api_error", "message": message}}
        return Event(event="error", data=json.dumps(data)).encode()
    return Event(data=json.dumps({"error": {"message": message, "type": "api_error"}})).encode()


class SubmitApi(CompatApi):
    """A compatible endpoint that queues the body as a request of its flavour and operation."""

    def post(self, request: Request) -> Response:
        return self.submit(request)


@extend_schema_view(post=compat_submit_schema("chat"))
class ChatCompletionsApi(SubmitApi):
    """OpenAI-compatible chat completions (plain and `stream: true`)."""

    flavour = "openai"


@extend_schema_view(post=compat_submit_schema("responses"))
class ResponsesApi(SubmitApi):
    """OpenAI-compatible Responses API (plain and `stream: true`, its own event types): cost from
    `input` and `instructions` plus `max_output_tokens`, settled from the response's usage.
    The body goes upstream unchanged: what the balancer cannot act on (previous_response_id,
    store, background, tools) reaches the provider as sent."""

    flavour = "openai"
    operation = Operation.RESPONSES


@extend_schema_view(post=compat_submit_schema("embeddings"))
class EmbeddingsApi(SubmitApi):
    """OpenAI-compatible embeddings: cost = input tokens (a string, strings, or token arrays),
    limited, queued and ordered like everything else."""

    flavour = "openai"
    operation = Operation.EMBEDDINGS


@extend_schema_view(post=compat_submit_schema("messages"))
class MessagesApi(SubmitApi):
    """Anthropic-compatible messages (plain and `stream: true`)."""

    flavour = "anthropic"


class CountTokensApi(CompatApi):
    """Anthropic-compatible token counting, answered locally by the balancer's estimator."""

    flavour = "anthropic"

    @compat_submit_schema("count_tokens")
    def post(self, request: Request) -> Response:
        body, served, group = self.body_and_model(request)  # one the key may use, else 404
        first = deployments_for(api_key=api_key_of(request), served_model=served, group=group)[0]
        return Response({"input_tokens": estimate_input_tokens(body, kind=first.provider.kind)})


FORMAT_NAMES = {"openai": "OpenAI's", "anthropic": "Anthropic's"}


def sdk_flavour(request: Request) -> str:
    """Which SDK asks: the Anthropic SDK sends `anthropic-version` with every request."""
    return "anthropic" if "anthropic-version" in request.headers else "openai"


class ModelsApi(CompatApi):
    """The models the asking SDK can call (those of its API's format: the Anthropic SDK's models
    for the Anthropic SDK), in a shape both read (OpenAI's list, Anthropic's page). Each says
    whether it can be called (`available`: false once the workers found its provider's key
    missing and none has it — then a call to it is refused up front)."""

    @MODELS_LIST
    def get(self, request: Request) -> Response:
        self.flavour = sdk_flavour(request)
        data = models_described(api_key_of(request), self.flavour)
        return Response(
            {
                "object": "list",
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )


class ModelDetailApi(CompatApi):
    """One model, for both SDKs' `models.retrieve`, by any name a call accepts (a group, a model,
    `provider/model`): only a model the key may use, of the asking SDK's format; else a 404 in
    the API's own format (Anthropic's when the client speaks it)."""

    @MODELS_RETRIEVE
    def get(self, request: Request, model_id: str) -> Response:
        self.flavour = sdk_flavour(request)
        name = unquote(model_id)
        served, group = self.model_named(request, name)
        listed = models_described(api_key_of(request), self.flavour)
        if group is not None:
            found = next((m for m in listed if m["id"] == group.name), None)
        else:
            found = next((m for m in listed if m.get("model") == str(served)), None)
        if found is None:
            raise exceptions.NotFound(f"The model {name!r} is not served here.")
        return Response({**found, "id": name, "display_name": name})


def models_described(api_key: ApiKey, flavour: str) -> list[dict[str, Any]]:
    """The groups and models of `flavour`'s format `api_key` may use, as /v1/models lists them."""
    everything = [m for m in served_models_list() if flavour_of_model(m) == flavour]
    models = served_models_for(api_key, everything)
    groups = [
        g for g in model_groups_served() if any(flavour_of_model(m) == flavour for m in g.deployments_served)
    ]
    # ids as resolve_model reads them, over every model: a group's name first, then a model's
    # own name when no other model and no group has it, else provider/model
    names = [m.name for m in everything]
    group_names = {g.name for g in groups}

    def available(m: ServedModel) -> bool:
        # As a call to it is refused up front (completions.workers.CallableProviders).
        return callable_providers.reason([(m.provider.name, m.provider.kind)]) is None

    data = []
    for g in groups:
        usable = served_models_for(
            api_key, [m for m in g.deployments_served if flavour_of_model(m) == flavour]
        )
        if usable:
            entry = _model_entry(g.name, g.created_at, "balancer", any(available(m) for m in usable))
            data.append({**entry, "deployments": [str(m) for m in usable]})
    for m in models:
        alone = names.count(m.name) == 1 and m.name not in group_names
        model_id = m.name if alone else f"{m.provider.name}/{m.name}"
        data.append({**_model_entry(model_id, m.created_at, m.provider.name, available(m)), "model": str(m)})
    return data


def _model_entry(model_id: str, created: Any, owner: str, available: bool) -> dict[str, Any]:
    entry = {
        "id": model_id,
        "object": "model",
        "created": int(created.timestamp()),
        "owned_by": owner,
        "type": "model",
        "display_name": model_id,
        "created_at": created.isoformat(),
        "available": available,
    }
    if not available:
        entry["unavailable_reason"] = UNAVAILABLE
    return entry
