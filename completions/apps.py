from __future__ import annotations

from django.apps import AppConfig


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
