"""The credentials boundary: a provider can name only a provider-key variable and an http(s)
base URL — in the registry file, in the admin, and again where the worker reads the key."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from completions.config import ConfigError, config_apply
from completions.models import Provider
from completions.providers import provider_for
from completions.providers.base import ProviderConfig, ProviderError

pytestmark = pytest.mark.django_db

# What the compose file's one .env holds besides the provider keys, and other variables no
# provider key may be read from.
PROJECT_SECRETS = [
    "DJANGO_SECRET_KEY",
    "DATABASE_URL",
    "REDIS_URL",
    "FLOWER_BASIC_AUTH",
    "POSTGRES_PASSWORD",
    "BALANCER_METRICS_TOKEN",
    "PGPASSWORD",
    "CELERY_BROKER_URL",
    "DJANGO_API_KEY",  # ends like a provider key, but the prefix is the project's
    "SECRET_KEY",
]


def registry(**provider: Any) -> dict[str, Any]:
    return {"providers": [{"name": "rogue", "kind": "openai", "models": ["m"], **provider}]}


@pytest.mark.parametrize("name", [*PROJECT_SECRETS, "HOME", "PATH", "AWS_SECRET_ACCESS_KEY", "OPENAI_KEY"])
def test_the_registry_file_refuses_a_key_variable_that_is_not_a_provider_key(name: str) -> None:
    with pytest.raises(ConfigError, match="api_key_env"):
        config_apply(registry(api_key_env=name))
    assert not Provider.objects.filter(name="rogue").exists()


@pytest.mark.parametrize("name", PROJECT_SECRETS)
def test_the_projects_own_settings_stay_refused_even_when_listed(name: str, settings: Any) -> None:
    settings.BALANCER_PROVIDER_KEY_VARIABLES = [name]
    with pytest.raises(ConfigError, match="balancer's own settings"):
        config_apply(registry(api_key_env=name))


def test_provider_key_variables_and_listed_names_are_accepted(settings: Any) -> None:
    config_apply(registry(api_key_env="GROQ_API_KEY"))
    assert Provider.objects.get(name="rogue").api_key_env == "GROQ_API_KEY"
    with pytest.raises(ConfigError):
        config_apply(registry(api_key_env="AZURE_OPENAI_KEY"))
    settings.BALANCER_PROVIDER_KEY_VARIABLES = ["AZURE_OPENAI_KEY"]
    config_apply(registry(api_key_env="AZURE_OPENAI_KEY"))
    assert Provider.objects.get(name="rogue").api_key_env == "AZURE_OPENAI_KEY"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://files.example.com/v1",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_INFO",
        "https://user:pw@api.example.com/v1",
        "javascript:alert(1)",
    ],
)
def test_the_registry_file_refuses_base_urls_that_are_not_http(url: str) -> None:
    with pytest.raises(ConfigError, match="base_url"):
        config_apply(registry(base_url=url, api_key_env="GROQ_API_KEY"))
    assert not Provider.objects.filter(name="rogue").exists()


def test_a_registry_change_of_endpoint_is_logged_with_old_and_new_values(caplog: Any) -> None:
    config_apply(registry(base_url="https://a.example.com/v1", api_key_env="GROQ_API_KEY"))
    caplog.clear()
    config_apply(registry(base_url="https://a.example.com/v1", api_key_env="GROQ_API_KEY"))
    assert "Endpoint changed" not in caplog.text  # applying the same file again changes nothing
    config_apply(registry(base_url="https://b.example.com/v1", api_key_env="GROQ_API_KEY"))
    assert "'https://a.example.com/v1' → 'https://b.example.com/v1'" in caplog.text


@pytest.mark.parametrize(
    ("key_env", "base_url", "reason"),
    [
        ("REDIS_URL", "http://127.0.0.1:9/v1", "balancer's own settings"),
        ("DJANGO_SECRET_KEY", "", "balancer's own settings"),
        ("LEAKY", "http://127.0.0.1:9/v1", "not a provider key variable"),
        ("GROQ_API_KEY", "ftp://127.0.0.1:9/v1", "Only http"),
    ],
)
def test_a_worker_never_reads_a_refused_variable_even_from_a_row_written_past_the_checks(
    key_env: str, base_url: str, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a row written before the rules existed, or by SQL: the worker checks again.
    monkeypatch.setenv(key_env, "the-secret-value")
    config = ProviderConfig.build(
        name="rogue",
        kind="openai",
        base_url=base_url,
        api_key_env=key_env,
        default_key_env="OPENAI_API_KEY",
        timeout=1,
        options={},
    )
    assert config.api_key is None and reason in config.refused
    with pytest.raises(ProviderError, match=reason) as refused:
        provider_for(config).complete({"model": "m", "messages": []})
    assert not refused.value.transient
    assert "the-secret-value" not in str(refused.value)


def _staff(*perms: str) -> Client:
    user = get_user_model().objects.create_user("ops", password="pw-tests-only", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=perms))
    client = Client()
    client.force_login(user)
    return client


def _form(provider: Provider, **changes: str) -> dict[str, Any]:
    return {
        "name": provider.name,
        "kind": provider.kind,
        "base_url": provider.base_url,
        "api_key_env": provider.api_key_env,
        "timeout_seconds": provider.timeout_seconds,
        "options": "{}",
        "models-TOTAL_FORMS": "0",
        "models-INITIAL_FORMS": "0",
        **changes,
    }


def test_changing_where_a_provider_sends_its_key_needs_the_endpoint_permission() -> None:
    config_apply(registry(base_url="https://a.example.com/v1", api_key_env="GROQ_API_KEY"))
    provider = Provider.objects.get(name="rogue")
    url = f"/admin/completions/provider/{provider.pk}/change/"

    editor = _staff("view_provider", "change_provider")
    page = editor.get(url).content.decode()
    assert 'name="timeout_seconds"' in page and 'name="base_url"' not in page  # shown, not editable
    answer = editor.post(
        url,
        _form(
            provider, base_url="http://listener.example/", api_key_env="OTHER_API_KEY", timeout_seconds="7"
        ),
    )
    assert answer.status_code == 302
    provider.refresh_from_db()
    assert (provider.base_url, provider.api_key_env, provider.timeout_seconds) == (
        "https://a.example.com/v1",
        "GROQ_API_KEY",
        7,
    )

    get_user_model().objects.filter(username="ops").delete()
    operator = _staff("view_provider", "change_provider", "change_provider_endpoint")
    refused = operator.post(url, _form(provider, api_key_env="DJANGO_SECRET_KEY"))
    assert refused.status_code == 200 and "balancer&#x27;s own settings" in refused.content.decode()
    answer = operator.post(url, _form(provider, base_url="https://b.example.com/v1"))
    assert answer.status_code == 302
    provider.refresh_from_db()
    assert provider.base_url == "https://b.example.com/v1"
    logged = [entry.get_change_message() for entry in LogEntry.objects.filter(object_id=str(provider.pk))]
    assert any("'https://a.example.com/v1' → 'https://b.example.com/v1'" in m for m in logged)
