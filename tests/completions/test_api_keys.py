"""Client keys: stored hashed, found by the raw key, created by the command."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from completions.models import ApiKey
from completions.selectors import api_key_get_by_raw
from completions.services import api_key_create

pytestmark = pytest.mark.django_db


# -- API keys -----------------------------------------------------------------------------------


def test_api_keys_are_stored_hashed_and_found_by_the_raw_key() -> None:
    key, raw = api_key_create(name="billing")
    stored = ApiKey.objects.get(pk=key.pk)
    assert raw not in (stored.key_hash, stored.prefix, stored.name)
    assert len(stored.key_hash) == 64
    assert api_key_get_by_raw(raw_key=raw) == key
    assert api_key_get_by_raw(raw_key=raw + "x") is None
    stored.is_active = False
    stored.save()
    assert api_key_get_by_raw(raw_key=raw) is None


def test_create_api_key_command_prints_a_working_key(capsys: pytest.CaptureFixture[str]) -> None:
    call_command("create_api_key", "cli-client")
    raw = capsys.readouterr().out.strip()
    assert raw.startswith("lb-")
    assert api_key_get_by_raw(raw_key=raw).name == "cli-client"
