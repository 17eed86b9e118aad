"""What Swagger (/api/docs/) shows of the compatible endpoints: a working example body for each
(make run's mock models: no key, no network), the answer's shape, and the errors each may give
in its API's own format. "Try it out" sends the example as it is (tests/test_swagger.py runs
every example against a live stack)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema

F = TypeVar("F", bound=Callable[..., Any])

HELLO = [{"role": "user", "content": "Hello"}]

BODIES: dict[str, dict[str, Any]] = {
    "chat": {"model": "mock-gpt", "messages": HELLO, "max_tokens": 20},
    "responses": {"model": "mock-gpt", "input": "Hello", "max_output_tokens": 20},
    "embeddings": {"model": "mock-gpt", "input": ["first", "second"]},
    "messages": {"model": "mock-claude", "max_tokens": 20, "messages": HELLO},
    "count_tokens": {"model": "mock-claude", "messages": HELLO},
}
STREAMED = {
    "chat": {**BODIES["chat"], "stream": True, "stream_options": {"include_usage": True}},
    "responses": {**BODIES["responses"], "stream": True},
    "messages": {**BODIES["messages"], "stream": True},
}
SAYS = {
    "chat": "OpenAI's chat completion (or, streamed, its chunks as server-sent events).",
    "responses": "OpenAI's response object (or, streamed, its events).",
    "embeddings": "OpenAI's embeddings list.",
    "messages": "Anthropic's message (or, streamed, its events).",
    "count_tokens": '`{"input_tokens": N}`, the balancer\'s own estimate (no upstream call).',
}


def _errors(kind: str) -> dict[int, OpenApiResponse]:
    errors = {
        400: OpenApiResponse(OpenApiTypes.OBJECT, "Bad input, or a request that can never fit its limits."),
        401: OpenApiResponse(OpenApiTypes.OBJECT, "No API key, or not a valid one."),
        404: OpenApiResponse(
            OpenApiTypes.OBJECT,
            "The model is not served here, the key may not use it, or it speaks the other API's format.",
        ),
    }
    if kind != "count_tokens":
        errors[429] = OpenApiResponse(OpenApiTypes.OBJECT, "The key has as many calls waiting as it may.")
        errors[502] = OpenApiResponse(OpenApiTypes.OBJECT, "The upstream failed, or its reply was too large.")
        errors[504] = OpenApiResponse(
            OpenApiTypes.OBJECT,
            "Not answered within BALANCER_COMPAT_MAX_WAIT_SECONDS (the body says where to fetch it).",
        )
    return errors


def compat_submit_schema(kind: str) -> Callable[[F], F]:
    """The schema of a compatible POST endpoint of `kind` (chat, responses, embeddings, messages,
    count_tokens)."""
    examples = [OpenApiExample(f"{kind}: a mock model", value=BODIES[kind], request_only=True)]
    if kind in STREAMED:
        examples.append(OpenApiExample(f"{kind}: streamed", value=STREAMED[kind], request_only=True))
    return extend_schema(
        request=OpenApiTypes.OBJECT,
        examples=examples,
        responses={200: OpenApiResponse(OpenApiTypes.OBJECT, SAYS[kind]), **_errors(kind)},
        parameters=[
            OpenApiParameter(
                "x-balancer-priority",
                str,
                OpenApiParameter.HEADER,
                required=False,
                enum=["interactive", "default", "batch"],
                description="Its class in line (up to the key's highest). Never sent upstream.",
            ),
            OpenApiParameter(
                "x-balancer-tier",
                str,
                OpenApiParameter.HEADER,
                required=False,
                enum=["auto", "realtime", "flex"],
                description="The tier to send it in (auto: a batch-class call goes flex where its "
                "deployment offers it and its deadline leaves time). Never sent upstream.",
            ),
        ]
        if kind != "count_tokens"
        else [],
    )


MODELS_LIST = extend_schema(
    operation_id="v1_models_list",
    responses={
        200: OpenApiResponse(
            OpenApiTypes.OBJECT,
            "The models the asking SDK can call (send `anthropic-version` for Anthropic's).",
        ),
        401: OpenApiResponse(OpenApiTypes.OBJECT, "No API key, or not a valid one."),
    },
)
MODELS_RETRIEVE = extend_schema(
    operation_id="v1_models_retrieve",
    parameters=[
        OpenApiParameter(
            "model_id",
            str,
            OpenApiParameter.PATH,
            description="Any name a call accepts: a group, a model, or provider/model.",
            examples=[OpenApiExample("mock-gpt", value="mock-gpt")],
        )
    ],
    responses={
        200: OpenApiResponse(OpenApiTypes.OBJECT, "The model."),
        401: OpenApiResponse(OpenApiTypes.OBJECT, "No API key, or not a valid one."),
        404: OpenApiResponse(OpenApiTypes.OBJECT, "Not served here, or not to this key."),
    },
)


def batch_schema(operation_id: str, says: str, example: dict[str, Any] | None = None) -> Callable[[F], F]:
    """The schema of a Batch API operation (completions.batch_api): its id, what it answers, and
    an example body for those that take one."""
    return extend_schema(
        operation_id=operation_id,
        request=OpenApiTypes.OBJECT if example is not None else None,
        examples=[OpenApiExample("a batch of two", value=example, request_only=True)] if example else [],
        responses={
            200: OpenApiResponse(OpenApiTypes.OBJECT, says),
            400: OpenApiResponse(
                OpenApiTypes.OBJECT, "Bad input: the first bad line is named; nothing is queued."
            ),
            401: OpenApiResponse(OpenApiTypes.OBJECT, "No API key, or not a valid one."),
            404: OpenApiResponse(OpenApiTypes.OBJECT, "No such batch or file for this key."),
        },
    )


MESSAGE_BATCH_EXAMPLE = {
    "requests": [
        {"custom_id": f"hello-{i}", "params": {"model": "mock-claude", "max_tokens": 20, "messages": HELLO}}
        for i in (1, 2)
    ]
}
BATCH_EXAMPLE = {
    "input_file_id": "file-… (from POST /v1/files, purpose batch)",
    "endpoint": "/v1/chat/completions",
    "completion_window": "24h",
}
FILE_UPLOAD = extend_schema(
    operation_id="v1_files_create",
    request={
        "multipart/form-data": {
            "type": "object",
            "properties": {
                "purpose": {"type": "string", "enum": ["batch"]},
                "file": {"type": "string", "format": "binary"},
            },
            "required": ["purpose", "file"],
        }
    },
    responses={200: OpenApiResponse(OpenApiTypes.OBJECT, "The file object.")},
)
