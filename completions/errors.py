"""Errors as JSON, in the shape of the API a client reached: the balancer's own API
({"error": {"type", "message", "fields"?}}), OpenAI's ({"error": {"message", "type", "param",
"code"}}) under /v1/, Anthropic's ({"type": "error", "error": {"type", "message"}}) under
/v1/messages. `JsonErrorsMiddleware` (completions.middleware) turns every other error page under
those paths — Django's own 403, 404, 405 and 500, with DEBUG on or off — into one of these."""

from __future__ import annotations

import math
from http import HTTPStatus
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

    def __init__(self, detail: str, retry_after: float, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.headers = headers or {}


class BudgetExhausted(TooManyRequests):
    """A budget cannot take the request until its period resets (completions.spend)."""

    default_code = "budget_exceeded"

    def __init__(self, detail: str, retry_after: float, reset_at: str) -> None:
        super().__init__(detail, retry_after, {"x-should-retry": "false"})
        self.reset_at = reset_at


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "Service temporarily unavailable."
    default_code = "unavailable"


def error_body(type_: str, message: str, fields: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type_, "message": message}
    if fields is not None:
        error["fields"] = fields
    return {"error": error}


# Each compatible API's names for the statuses the balancer itself answers with.
KINDS = {
    "openai": {
        400: "invalid_request_error",
        401: "invalid_api_key",
        403: "permission_error",
        404: "not_found_error",
        405: "invalid_request_error",
        413: "invalid_request_error",
        429: "rate_limit_exceeded",
        502: "api_error",
        503: "api_error",
        504: "timeout",
    },
    "anthropic": {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        405: "invalid_request_error",
        413: "request_too_large",
        429: "rate_limit_error",
        502: "api_error",
        503: "overloaded_error",
        504: "timeout_error",
    },
    "native": {
        400: "bad_request",
        401: "not_authenticated",
        403: "permission_denied",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
        429: "rate_limited",
        500: "server_error",
        503: "unavailable",
    },
}


def compat_error_body(flavour: str, status: int, message: str, kind: str = "", **more: Any) -> dict[str, Any]:
    """An error in a compatible API's own format, its type named after `status` (or `kind`, the
    balancer's own: then its code too); `more`: fields of the balancer's own beside them."""
    if flavour == "anthropic":
        return {
            "type": "error",
            "error": {"type": kind or KINDS[flavour].get(status, "api_error"), "message": message, **more},
        }
    error = {
        "message": message,
        "type": kind or KINDS[flavour].get(status, "api_error"),
        "param": None,
        "code": kind or None,
    }
    return {"error": {**error, **more}}


def compat_error_response(
    flavour: str, status: int, message: str, headers: dict[str, str] | None = None
) -> JsonResponse:
    return JsonResponse(compat_error_body(flavour, status, message), status=status, headers=headers)


def flavour_of_path(path: str) -> str | None:
    """Which API's error shape a path answers in; None outside the APIs (the admin's pages)."""
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith("/v1/"):
        return "openai"
    if path.startswith(("/api/", "/health", "/ready", "/metrics")):
        return "native"
    return None


# What a client is told when no one said more (Django's own error pages: the server's log has
# the rest).
DEFAULT_MESSAGES = {
    400: "Bad request.",
    403: "Forbidden: this request was refused (CSRF verification failed, or no permission).",
    404: "Not found: no such path here.",
    500: "Internal server error; it has been logged.",
}


def path_error_response(path: str, status: int, message: str | None = None) -> JsonResponse:
    """An error for `path` in its API's shape (native outside the compatible APIs)."""
    if message is None:
        try:
            message = DEFAULT_MESSAGES.get(status) or f"{HTTPStatus(status).phrase}."
        except ValueError:
            message = f"Error {status}."
    flavour = flavour_of_path(path) or "native"
    if flavour == "native":
        return JsonResponse(error_body(KINDS["native"].get(status, "error"), message), status=status)
    return compat_error_response(flavour, status, message)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = response.data
        message = "Invalid request: " + "; ".join(flatten_detail(fields))
        response.data = error_body("invalid_request", message, fields)
    elif isinstance(exc, exceptions.APIException):
        code = exc.get_codes()
        response.data = error_body(code if isinstance(code, str) else exc.default_code, str(exc.detail))
    if isinstance(exc, BudgetExhausted):
        response.data["error"]["reset_at"] = exc.reset_at
    if isinstance(exc, TooManyRequests):
        for name, value in {**exc.headers, **retry_after_headers(exc.retry_after)}.items():
            response[name] = value
    return response


def retry_after_headers(seconds: float) -> dict[str, str]:
    """`retry-after` in whole seconds (rounded up) and `retry-after-ms`, as the SDKs read them."""
    return {"retry-after": str(max(1, math.ceil(seconds))), "retry-after-ms": str(int(seconds * 1000))}


def flatten_detail(detail: Any, path: str = "") -> list[str]:
    """DRF's error detail (a string, a list or a dict of them) as sentences, each prefixed with
    the field it concerns."""
    if isinstance(detail, dict):
        out: list[str] = []
        for key, value in detail.items():
            name = path if key == "non_field_errors" else (f"{path}.{key}" if path else str(key))
            out.extend(flatten_detail(value, name))
        return out
    if isinstance(detail, list):
        return [m for item in detail for m in flatten_detail(item, path)]
    return [f"{path}: {detail}" if path else str(detail)]


# Django's error views (balancer_project.urls), in the shape of the API the path belongs to.


def json_404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return path_error_response(request.path, 404)


def json_500(request: HttpRequest) -> JsonResponse:
    return path_error_response(request.path, 500)


def json_400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return path_error_response(request.path, 400)
