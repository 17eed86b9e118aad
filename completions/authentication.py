"""Client authentication: balancer API keys, as the SDKs send them, or a staff session for the
browsable API."""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from completions.models import ApiKey
from completions.selectors import api_key_get_by_raw
from completions.services import api_key_for_user


class ApiClient:
    """`request.user` for a request authenticated by API key (there is no Django user behind it)."""

    is_authenticated = True
    is_anonymous = False
    is_staff = False
    is_active = True

    def __init__(self, key: ApiKey) -> None:
        self.key = key
        self.username = key.name

    def __str__(self) -> str:
        return self.key.name

    def get_username(self) -> str:
        return self.key.name


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <key>` (OpenAI SDK) or `x-api-key: <key>` (Anthropic SDK)."""

    def authenticate(self, request: Request) -> tuple[ApiClient, ApiKey] | None:
        parts = authentication.get_authorization_header(request).split()
        raw: bytes | str | None = None
        if parts and parts[0].lower() == b"bearer":
            if len(parts) != 2:
                raise exceptions.AuthenticationFailed("Malformed Authorization header: use 'Bearer <key>'.")
            raw = parts[1]
        else:
            raw = request.META.get("HTTP_X_API_KEY")
        if not raw:
            return None
        try:
            text = raw.decode() if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid API key.") from None
        key = api_key_get_by_raw(raw_key=text)
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid API key.")
        return ApiClient(key), key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="balancer"'


class StaffSessionAuthentication(authentication.SessionAuthentication):
    """A logged-in staff user (Django admin session) uses the browsable API with a key of their own."""

    def authenticate(self, request: Request) -> tuple[Any, ApiKey] | None:
        result = super().authenticate(request)
        if result is None:
            return None
        user, _ = result
        if not user.is_staff:
            return None
        key = api_key_for_user(user=user)
        if not key.is_active:  # revoked in the admin: the session does not bring it back
            raise exceptions.AuthenticationFailed("This user's API key is deactivated.")
        return user, key


class HasApiKey(permissions.BasePermission):
    message = "An API key is required: send 'Authorization: Bearer <key>'."

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, ApiKey)


def api_key_of(request: Request) -> ApiKey:
    """The key a request was authenticated with (views behind HasApiKey)."""
    key = request.auth
    assert isinstance(key, ApiKey), "a view without HasApiKey asked for the request's key"
    return key
