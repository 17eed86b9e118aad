from __future__ import annotations

from django.apps import AppConfig


class CompletionsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "completions"
    verbose_name = "Completions"

    def ready(self) -> None:
        from completions import schema  # noqa: F401  (registers the OpenAPI auth extensions)
