from __future__ import annotations

import logging

from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger(__name__)


class CompletionsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "completions"
    verbose_name = "Completions"

    def ready(self) -> None:
        from balancer_project import querycount
        from completions import quota_signals, schema  # noqa: F401  (signal receivers; OpenAPI auth extensions)
        from completions.registry_cache import connect_signals

        connect_signals()
        querycount.install()
        if settings.BALANCER_REFUSE_DEPLOY_WARNINGS:
            refuse_deploy_warnings()


def refuse_deploy_warnings() -> None:
    from balancer_project.production_checks import deploy_check_refusals

    for check_id, reason in settings.DEPLOY_CHECK_WAIVERS.items():
        logger.warning("deployment check %s waived: %s", check_id, reason)
    refusals = deploy_check_refusals()
    if refusals:
        raise ImproperlyConfigured(
            "Production refuses to start with these `check --deploy` warnings (fix them, or waive one "
            "with a reason in DJANGO_WAIVED_CHECKS):\n  - " + "\n  - ".join(refusals)
        )
