"""Production settings: refuse to start with development defaults."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from balancer_project.production_checks import parse_waivers, secret_problems

from .base import *  # noqa: F403
from .base import BALANCER_METRICS_TOKEN, env

DEBUG = env.bool("DJANGO_DEBUG", default=False)
if DEBUG:
    raise ImproperlyConfigured("DJANGO_DEBUG must be off in production.")
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")  # no development default here
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=[])
_problems = secret_problems(
    secret_key=SECRET_KEY,
    allowed_hosts=ALLOWED_HOSTS,
    metrics_token=BALANCER_METRICS_TOKEN,
    database_url=env.str("DATABASE_URL", default=""),
    flower_auth=env.str("FLOWER_BASIC_AUTH", default=""),
)
if _problems:
    raise ImproperlyConfigured("Production refuses to start:\n  - " + "\n  - ".join(_problems))

# Every `check --deploy` warning stops the start (completions/apps.py) unless waived here with a
# reason: DJANGO_WAIVED_CHECKS="security.W008=TLS ends at the proxy, which redirects; …".
try:
    DEPLOY_CHECK_WAIVERS = parse_waivers(env.str("DJANGO_WAIVED_CHECKS", default=""))
except ValueError as exc:
    raise ImproperlyConfigured(str(exc)) from None
SILENCED_SYSTEM_CHECKS = list(DEPLOY_CHECK_WAIVERS)
BALANCER_REFUSE_DEPLOY_WARNINGS = True
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=True)
CSRF_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=True)
# HTTPS only. Health and readiness probes (load balancers) may use plain HTTP.
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
SECURE_REDIRECT_EXEMPT = [r"^health$", r"^ready$", r"^metrics$"]
SECURE_HSTS_SECONDS = env.int("DJANGO_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_HSTS_PRELOAD", default=True)
# Django's development static serving is off; put a proxy or CDN in front of STATIC_ROOT.
BALANCER_SERVE_STATIC = env.bool("BALANCER_SERVE_STATIC", default=False)
