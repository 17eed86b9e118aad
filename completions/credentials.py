"""The credentials boundary: which environment variables a provider may name as its key, and
which base URLs it may send that key to.

A worker sends the value of a provider's `api_key_env` as a Bearer token to its `base_url`.
Without a boundary, whoever may edit a provider could name any variable of the worker's
environment (`DJANGO_SECRET_KEY`, `DATABASE_URL`, …) and a server of their choosing, and read it.
So a credentials variable must look like a provider key (`*_API_KEY`) or be listed by the
operator in `BALANCER_PROVIDER_KEY_VARIABLES`, and it can never be one of the project's own
settings, whatever that setting says. Base URLs are http(s) only.

The same rules hold in three places: the model field's validator (admin, registry file,
`full_clean`), and the worker when it reads the key (`ProviderConfig.build`), so a row written
before the rules existed, or past them by SQL, still cannot reach a secret.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError

KEY_VARIABLE_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]*_API_KEY$")

# The project's own settings: never a provider's key, even when listed in
# BALANCER_PROVIDER_KEY_VARIABLES. Prefixes cover every variable the settings, the launcher and
# the compose file read.
PROJECT_PREFIXES = ("DJANGO_", "BALANCER_", "POSTGRES_", "PG", "CELERY_", "FLOWER_", "REDIS_", "DATABASE_")
PROJECT_NAMES = frozenset(
    {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "HOST", "PORT", "LOG_LEVEL", "LOG_FORMAT"}
)

URL_SCHEMES = ("http", "https")


def key_variable_problem(name: str) -> str | None:
    """Why `name` may not hold a provider's key, or None when it may."""
    if name in PROJECT_NAMES or name.startswith(PROJECT_PREFIXES):
        return f"{name} is one of the balancer's own settings, never a provider's key."
    if KEY_VARIABLE_PATTERN.match(name) or name in settings.BALANCER_PROVIDER_KEY_VARIABLES:
        return None
    return (
        f"{name} is not a provider key variable: use a name ending in _API_KEY "
        "(A-Z, 0-9, _), or list it in BALANCER_PROVIDER_KEY_VARIABLES."
    )


def base_url_problem(url: str) -> str | None:
    """Why a provider may not send its key to `url`, or None when it may (empty: the SDK's own)."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return "Not a valid URL."
    if parts.scheme not in URL_SCHEMES or not parts.hostname:
        return "Only http:// and https:// base URLs."
    if parts.username or parts.password:
        return "No credentials in the base URL: the key comes from its variable."
    return None


def validate_key_variable(value: str) -> None:
    problem = key_variable_problem(value) if value else None
    if problem:
        raise ValidationError(problem, code="key_variable")


def validate_base_url(value: str) -> None:
    problem = base_url_problem(value)
    if problem:
        raise ValidationError(problem, code="base_url")
