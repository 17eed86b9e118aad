"""One JSON error shape for the whole API: {"error": {"type", "message", "fields"?}}."""

from __future__ import annotations

import math
from typing import Any

from django.http import HttpRequest, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large."
    default_code = "payload_too_large"


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "Conflict."
    default_code = "conflict"


class ExceedsLimit(exceptions.APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_detail = "The request can never fit the model's rate limit."
    default_code = "exceeds_limit"


class TooManyRequests(exceptions.APIException):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_detail = "Rate limit of this API key reached."
    default_code = "rate_limited"

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "Service temporarily unavailable."
    default_code = "unavailable"


def error_body(type_: str, message: str, fields: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type_, "message": message}
    if fields is not None:
        error["fields"] = fields
    return {"error": error}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = response.data
        message = "Invalid request: " + "; ".join(_flatten(fields))
        response.data = error_body("invalid_request", message, fields)
    elif isinstance(exc, exceptions.APIException):
        code = exc.get_codes()
        response.data = error_body(code if isinstance(code, str) else exc.default_code, str(exc.detail))
    if isinstance(exc, TooManyRequests):
        for name, value in retry_after_headers(exc.retry_after).items():
            response[name] = value
    return response


def retry_after_headers(seconds: float) -> dict[str, str]:
    """`retry-after` in whole seconds (rounded up) and `retry-after-ms`, as the SDKs read them."""
    return {"retry-after": str(max(1, math.ceil(seconds))), "retry-after-ms": str(int(seconds * 1000))}


def _flatten(detail: Any, path: str = "") -> list[str]:
    if isinstance(detail, dict):
        out: list[str] = []
        for key, value in detail.items():
            name = path if key == "non_field_errors" else (f"{path}.{key}" if path else str(key))
            out.extend(_flatten(value, name))
        return out
    if isinstance(detail, list):
        return [m for item in detail for m in _flatten(item, path)]
    return [f"{path}: {detail}" if path else str(detail)]


def json_404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("not_found", "Not found."), status=404)


def json_500(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body("server_error", "Internal server error."), status=500)


def json_400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("bad_request", "Bad request."), status=400)
