"""`manage.py dev_credentials VAR_DIR`: the development API key and admin login `make run` prints,
kept in VAR_DIR so they stay the same across restarts. The key (VAR_DIR/dev-api-key, mode 600) is
made again when the one kept there is not a key of this database any more; the admin user
`admin` gets the password the launcher keeps in VAR_DIR/dev-admin-password."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from completions.selectors import api_key_get_by_raw
from completions.services import api_key_create


class Command(BaseCommand):
    help = "Make sure the development API key and admin login exist (make run)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("var_dir")

    def handle(self, *args: Any, **options: Any) -> None:
        var_dir = Path(options["var_dir"])
        key_file = var_dir / "dev-api-key"
        raw = key_file.read_text().strip() if key_file.exists() else ""
        if not raw or api_key_get_by_raw(raw_key=raw) is None:
            _, raw = api_key_create(name="development")
            key_file.write_text(raw + "\n")
        key_file.chmod(0o600)
        password = (var_dir / "dev-admin-password").read_text().strip()
        user_model = get_user_model()
        admin = user_model.objects.filter(username="admin").first()
        if admin is None:
            user_model.objects.create_superuser("admin", "admin@localhost", password)
        elif not admin.check_password(password):
            admin.set_password(password)
            admin.save()
