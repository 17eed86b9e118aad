"""The /api/v1 endpoints.

The views are ordinary (sync) DRF views: they authenticate, validate, write and serialise. When
the client asked to wait for the result, the view returns a `Pending` 202 and the async wrapper
`waitable` (completions.waiting) awaits it on the event loop: it waits for the request to finish
and represents it again.
"""

from __future__ import annotations

import base64
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from balancer_project.logs import request_id_var
from completions.authentication import api_key_of
from completions.errors import BudgetExhausted, Conflict, ExceedsLimit, ServiceUnavailable, TooManyRequests
from completions.models import CompletionRequest
from completions.routing import CostExceedsLimit, ModelNotAllowed, unavailable_reason
from completions.selectors import completion_request_get, completion_request_list
from completions.serializers import (
    CompletionCreateSerializer,
    CompletionRequestSerializer,
    WaitQuerySerializer,
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
from completions.tiers import TierNotOffered
from completions.waiting import Pending, on_db_pool, wait_for_request, wait_slots
from ratelimit.lines import key_quota_of, key_rate_headers


def _represent(request: Request, obj: CompletionRequest) -> tuple[int, dict[str, Any]]:
    data = CompletionRequestSerializer(obj, context={"request": request, "place": True}).data
    return (status.HTTP_200_OK if obj.is_terminal else status.HTTP_202_ACCEPTED), data


QUEUE_HEADER = "X-Queue-Seconds"


def _queue_header(response: Response, obj: CompletionRequest) -> None:
    """Time the request waited in line (so far, while it still waits)."""
    seconds = obj.queue_seconds
    if seconds is None:
        seconds = (timezone.now() - obj.created_at).total_seconds()
    response[QUEUE_HEADER] = f"{seconds:.3f}"


def _answer(request: Request, obj: CompletionRequest, wait: float) -> Response:
    """200 with the request when it is terminal; else 202 with a Location to poll, `Pending` when
    the client asked to wait: it is represented again when it finishes or `wait` runs out."""
    code, data = _represent(request, obj)
    # Past its key's cap of waits in this process, a request is answered at once (202: poll).
    release = (
        wait_slots.take_for(api_key_of(request)) if code == status.HTTP_202_ACCEPTED and wait > 0 else None
    )
    if release is not None:

        async def then() -> Response:
            await wait_for_request(str(obj.id), wait)
            return await on_db_pool(_refresh)(request, response, obj)

        pending = Pending(then, data)
        pending.hold(release)
        response: Response = pending
    else:
        response = Response(data, status=code)
    _queue_header(response, obj)
    if code == status.HTTP_202_ACCEPTED:
        response["Location"] = data["links"]["self"]
    return response


def _refresh(request: Request, response: Response, obj: CompletionRequest) -> Response:
    """The response made current: the request as it is now (it keeps the headers set on it)."""
    obj.refresh_from_db()
    code, data = _represent(request, obj)
    response.data = data
    response.status_code = code
    _queue_header(response, obj)
    if code != status.HTTP_202_ACCEPTED and "Location" in response:
        del response["Location"]
    if response.is_rendered:  # under the project's ASGI handler the first answer was rendered
        response.content = response.rendered_content
    return response


class CompletionPagination(CursorPagination):
    page_size = 50
    max_page_size = 500
    page_size_query_param = "limit"
    ordering = "-created_at"

    def get_page_size(self, request: Request) -> int:
        """`limit` from 1 to 500 (default 50); anything else is a 400, not silently ignored."""
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 4) or not 1 <= int(raw) <= self.max_page_size:
            raise ValidationError({"limit": [f"A whole number from 1 to {self.max_page_size}."]})
        return int(raw)

    def decode_cursor(self, request: Request) -> Cursor | None:
        """A `cursor` this API did not hand out is a 400: DRF checks its encoding (and answers
        404); its position, a creation time, reached the database unchecked (a 500)."""
        encoded = request.query_params.get(self.cursor_query_param)
        try:
            if encoded is not None:
                base64.b64decode(encoded, validate=True)  # DRF skips characters outside base64
            cursor = super().decode_cursor(request)
        except (NotFound, ValueError):
            cursor = None
            valid = False
        else:
            valid = cursor is None or cursor.position is None or _is_datetime(str(cursor.position))
        if not valid:
            raise ValidationError(
                {"cursor": ["Not a cursor from this API: follow the 'next' and 'previous' links."]}
            )
        return cursor


def _is_datetime(text: str) -> bool:
    try:
        return parse_datetime(text) is not None
    except ValueError:  # well formed, out of range (month 13)
        return False


# The one shape of every error of /api/v1, for the schema.
ERROR = inline_serializer(
    "Error",
    fields={
        "error": inline_serializer(
            "ErrorDetail",
            fields={
                "type": serializers.CharField(help_text="invalid_request, permission_denied, rate_limited…"),
                "message": serializers.CharField(help_text="A plain sentence: what is wrong and what to do."),
                "fields": serializers.DictField(required=False, help_text="Per invalid field, its problems."),
            },
        )
    },
)

SUBMIT_EXAMPLES = [
    OpenApiExample(
        "A mock model (no key, no network)",
        request_only=True,
        value={
            "provider": "mock",
            "model": "mock-gpt",
            "payload": {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 20},
            "wait": 10,
        },
    ),
    OpenApiExample(
        "Embeddings from the mock model",
        request_only=True,
        value={"model": "mock-gpt", "operation": "embeddings", "payload": {"input": ["first", "second"]}},
    ),
    OpenApiExample(
        "A model group (make run's mock-pool), at batch priority, with a deadline",
        request_only=True,
        value={
            "model": "mock-pool",
            "priority": "batch",
            "max_wait": 600,
            "wait": 0,
            "payload": {"messages": [{"role": "user", "content": "Summarise…"}], "max_tokens": 200},
        },
    ),
]


class CompletionListApi(APIView):
    """Submit a completion request, or list your own requests (newest first)."""

    @extend_schema(
        request=CompletionCreateSerializer,
        examples=SUBMIT_EXAMPLES,
        responses={
            200: OpenApiResponse(CompletionRequestSerializer, "It ended within `wait`: succeeded, failed…"),
            202: OpenApiResponse(CompletionRequestSerializer, "Still queued or running: poll its Location."),
            400: OpenApiResponse(
                ERROR,
                "Invalid input (each field's problems in `fields`), or a request that can never fit its buckets.",
            ),
            401: OpenApiResponse(ERROR, "No API key, or not a valid one."),
            403: OpenApiResponse(ERROR, "The key may not use this model, or this priority."),
            429: OpenApiResponse(
                ERROR, "The key is over its rate (fail-fast) or has as many waiting as it may."
            ),
            503: OpenApiResponse(
                ERROR,
                "No live worker can call the model (its provider's key is missing), or a fail-fast key's "
                "rate cannot be checked right now. Nothing was queued.",
            ),
        },
    )
    def post(self, request: Request) -> Response:
        api_key = api_key_of(request)
        serializer = CompletionCreateSerializer(data=request.data, context={"api_key": api_key})
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        unavailable = unavailable_reason(
            api_key=api_key, served_model=data["served_model"], group=data["group"]
        )
        if unavailable is not None:
            raise ServiceUnavailable(
                f"{data['group'].name if data['group'] else data['served_model']}: {unavailable}"
            )
        try:
            obj = completion_request_create(
                api_key=api_key,
                served_model=data["served_model"],
                payload=data["payload"],
                max_wait=data.get("max_wait"),
                group=data["group"],
                priority=data["priority"],
                operation=data["operation"],
                tier=data["tier"],
            )
        except InvalidPayload as exc:
            raise ValidationError({"payload": [str(exc)]}) from None
        except TierNotOffered as exc:
            raise ValidationError({"tier": [str(exc)]}) from None
        except CostExceedsLimit as exc:
            raise ExceedsLimit(str(exc)) from None
        except (ModelNotAllowed, PriorityNotAllowed) as exc:
            raise PermissionDenied(str(exc)) from None
        except KeyRateExceeded as exc:
            headers = key_rate_headers(api_key_id=api_key.pk, key_quota=key_quota_of(api_key))
            raise TooManyRequests(str(exc), exc.retry_after, headers) from None
        except LimiterUnavailable:
            raise ServiceUnavailable(
                "This key's rate cannot be checked right now; the request was not queued."
            ) from None
        except BudgetExceeded as exc:
            raise BudgetExhausted(str(exc), exc.retry_after, exc.reset_at) from None
        response = _answer(request, obj, data["wait"])
        for name, value in key_rate_headers(api_key_id=api_key.pk, key_quota=key_quota_of(api_key)).items():
            response[name] = value
        return response

    @extend_schema(responses=CompletionRequestSerializer(many=True))
    def get(self, request: Request) -> Response:
        paginator = CompletionPagination()
        page = paginator.paginate_queryset(
            completion_request_list(api_key=api_key_of(request)), request, view=self
        )
        return paginator.get_paginated_response(
            CompletionRequestSerializer(page, many=True, context={"request": request}).data
        )


class CompletionDetailApi(APIView):
    """Read one of your requests (optionally waiting up to `?wait=N` seconds for it to finish), or
    cancel it while it has not started."""

    def _get_object(self, request: Request, pk: Any) -> CompletionRequest:
        obj = completion_request_get(api_key=api_key_of(request), request_id=pk)
        if obj is None:
            raise NotFound("No such completion request.")
        request_id_var.set(str(obj.id))
        return obj

    @extend_schema(
        parameters=[OpenApiParameter("wait", float, description="Seconds to wait for a terminal state.")],
        responses={
            200: CompletionRequestSerializer,
            202: CompletionRequestSerializer,
            404: OpenApiResponse(ERROR, "No such request among this key's."),
        },
    )
    def get(self, request: Request, pk: Any) -> Response:
        query = WaitQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return _answer(request, self._get_object(request, pk), query.validated_data["wait"])

    @extend_schema(
        responses={
            200: CompletionRequestSerializer,
            404: OpenApiResponse(ERROR, "No such request among this key's."),
            409: OpenApiResponse(
                ERROR, "It has started (or ended): only a waiting request can be cancelled."
            ),
        }
    )
    def delete(self, request: Request, pk: Any) -> Response:
        obj = self._get_object(request, pk)
        if not completion_request_cancel(request=obj):
            raise Conflict(
                f"The request is {obj.status}; only a request that has not started can be cancelled."
            )
        response = Response(_represent(request, obj)[1])
        _queue_header(response, obj)
        return response
