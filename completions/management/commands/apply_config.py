from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from completions.config import ConfigError, config_apply, config_load


class Command(BaseCommand):
    help = "Apply a provider/model registry file (YAML or JSON); default: the BALANCER_CONFIG setting."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", nargs="?", help="Registry file; defaults to BALANCER_CONFIG.")

    def handle(self, *args: Any, **options: Any) -> None:
        path = options["path"] or settings.BALANCER_CONFIG
        if not path:
            raise CommandError("No file given and BALANCER_CONFIG is not set.")
        try:
            summary = config_apply(config_load(path))
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"{path}: {summary}")
