"""What production refuses to start with: a secret that anyone can read in this repository, a
host wildcard, a missing metrics token, and any `check --deploy` warning not waived with a reason.

The settings module calls the value checks while it loads (`secret_problems`), so every role —
web, worker, beat, Flower, manage.py — fails at once with the list of what to fix. Django's
deployment checks need the apps loaded, so `deploy_check_refusals` runs from the completions
app's ready().
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# Values that are, or were, in this repository and its examples. Public: never a production
# secret. (tests/test_security.py scans the repository so that a new example value cannot be
# added without being refused here or by the rules below.)
PUBLIC_VALUES = frozenset(
    {
        "change-me-to-50-random-characters",
        "change-me",
        "admin:change-me",
        "dev-insecure-secret-key-change-me",
        "build-only-0123456789abcdefghijklmnopqrstuvwxyz",
    }
)
# Words that mark a value as a placeholder somebody forgot to replace.
PLACEHOLDER = re.compile(
    r"change[-_ ]?me|insecure|example|placeholder|replace[-_ ]?me|build-only|secret-key", re.I
)

# Django's own rule for a secret key (security.W009): long and varied enough to be random.
SECRET_KEY_MIN_LENGTH = 50
SECRET_KEY_MIN_UNIQUE = 5
TOKEN_MIN_LENGTH = 24
FLOWER_PASSWORD_MIN_LENGTH = 12

GENERATE = 'python -c "import secrets; print(secrets.token_urlsafe(50))"'


def _public(value: str) -> bool:
    return value in PUBLIC_VALUES or bool(PLACEHOLDER.search(value))


def secret_key_problem(key: str) -> str | None:
    if not key:
        return f"Set DJANGO_SECRET_KEY (generate one with: {GENERATE})."
    if _public(key):
        return f"DJANGO_SECRET_KEY is an example value from the repository: generate one with {GENERATE}."
    if len(key) < SECRET_KEY_MIN_LENGTH or len(set(key)) < SECRET_KEY_MIN_UNIQUE:
        return (
            f"DJANGO_SECRET_KEY must be at least {SECRET_KEY_MIN_LENGTH} random characters "
            f"(generate one with {GENERATE})."
        )
    return None


def token_problem(name: str, token: str) -> str | None:
    if not token:
        return f"Set {name}: production requires it (generate one with {GENERATE})."
    if _public(token) or len(token) < TOKEN_MIN_LENGTH:
        return f"{name} must be at least {TOKEN_MIN_LENGTH} random characters, not an example value."
    return None


def database_password_problem(url: str) -> str | None:
    try:
        password = urlsplit(url).password or ""
    except ValueError:
        return None
    if password and _public(password):
        return "DATABASE_URL's password is an example value from the repository (POSTGRES_PASSWORD?)."
    return None


def flower_auth_problem(raw: str) -> str | None:
    """FLOWER_BASIC_AUTH (`user:password[,user:password]`), when set: no example passwords."""
    for pair in filter(None, raw.split(",")):
        _, _, password = pair.partition(":")
        if _public(password) or len(password) < FLOWER_PASSWORD_MIN_LENGTH:
            return (
                f"FLOWER_BASIC_AUTH needs user:password with a password of at least "
                f"{FLOWER_PASSWORD_MIN_LENGTH} random characters, not an example value."
            )
    return None


def allowed_hosts_problem(hosts: list[str]) -> str | None:
    if not hosts:
        return "Set DJANGO_ALLOWED_HOSTS to the host names the balancer is reached by."
    if any(host == "*" or host.strip() == "" for host in hosts):
        return "DJANGO_ALLOWED_HOSTS may not contain '*' (or an empty name) in production: name the hosts."
    return None


def secret_problems(
    *, secret_key: str, allowed_hosts: list[str], metrics_token: str, database_url: str, flower_auth: str
) -> list[str]:
    """Everything wrong with the production values, in one list (empty: fine)."""
    problems = [
        secret_key_problem(secret_key),
        allowed_hosts_problem(allowed_hosts),
        token_problem("BALANCER_METRICS_TOKEN", metrics_token),
        database_password_problem(database_url),
        flower_auth_problem(flower_auth),
    ]
    return [p for p in problems if p]


def parse_waivers(raw: str) -> dict[str, str]:
    """DJANGO_WAIVED_CHECKS: `id=reason; id=reason`, e.g. `security.W008=TLS ends at the proxy,
    which redirects`. A waiver without a reason is an error."""
    waived: dict[str, str] = {}
    for part in raw.split(";"):
        if not part.strip():
            continue
        check_id, _, reason = part.partition("=")
        if not check_id.strip() or not reason.strip():
            raise ValueError(f"DJANGO_WAIVED_CHECKS: {part.strip()!r} needs the form check.id=reason")
        waived[check_id.strip()] = reason.strip()
    return waived


def deploy_check_refusals() -> list[str]:
    """Django's deployment checks (`check --deploy`) that warn and are not waived (the waived
    ones are in SILENCED_SYSTEM_CHECKS, so `manage.py check --deploy` agrees)."""
    from django.core import checks

    found = checks.run_checks(include_deployment_checks=True, tags=[checks.Tags.security])
    return [f"{m.id}: {m.msg}" for m in found if m.level >= checks.WARNING and not m.is_silenced()]
