from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from completions.services import api_key_create


class Command(BaseCommand):
    help = "Create a client API key and print it once (only its hash is stored)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Who the key is for, e.g. 'billing-worker'.")

    def handle(self, *args: Any, **options: Any) -> None:
        key, raw = api_key_create(name=options["name"])
        self.stderr.write(f"Created key {key.prefix}… for {key.name}. It will not be shown again:")
        self.stdout.write(raw)
