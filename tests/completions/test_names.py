"""One definition of a safe name (completions.models.model_name, slug_name, env_var_name), held
by the model, the registry file and the admin alike: what providers call their models passes;
what could split a header, a Redis hash tag, a URL or a log line does not."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.test import Client

from completions.config import ConfigError, config_apply
from completions.models import ModelGroup, Provider, ServedModel

pytestmark = pytest.mark.django_db

REAL_NAMES = [
    "gpt-4o-2024-08-06",
    "claude-3-5-sonnet-20241022",
    "meta-llama/Llama-3.1-8B-Instruct",
    "accounts/fireworks/models/llama-v3p1-8b-instruct",
    "anthropic.claude-3-sonnet-20240229-v1:0",
    "llama3:8b",
    "gpt-4o@2024",
    "o1+tools",
    "ft:gpt-4o-mini:org:custom_suffix:id",
]
BAD_NAMES = [
    "hdr\r\nX-Injected: yes",
    "trailing-newline\n",
    "with space",
    "{hash}tag",
    'quote"d',
    "percent%20",
    "query?x",
    "frag#x",
    "-leading-dash",
    "tab\there",
    "nul\x00",
    "",
]


@pytest.mark.parametrize("name", REAL_NAMES)
def test_the_names_providers_use_are_accepted_for_models_and_groups(name: str) -> None:
    config_apply(
        {"providers": [{"name": "acme", "kind": "openai", "models": [{"name": name, "group": name}]}]}
    )
    assert ServedModel.objects.get(provider__name="acme", name=name).group == ModelGroup.objects.get(
        name=name
    )


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_name_that_could_split_a_header_a_key_or_a_log_line_is_refused_everywhere(name: str) -> None:
    with pytest.raises(ConfigError):
        config_apply({"providers": [{"name": "acme", "kind": "openai", "models": [name]}]})
    with pytest.raises(ConfigError):
        config_apply(
            {"providers": [{"name": "acme", "kind": "openai", "models": [{"name": "ok", "group": name}]}]}
        )
    with pytest.raises(ValidationError):
        ServedModel(
            provider=Provider.objects.get_or_create(name="acme2", kind="openai")[0], name=name
        ).full_clean()
    assert (
        not ServedModel.objects.filter(name=name).exists()
        and not ModelGroup.objects.filter(name=name).exists()
    )


def test_the_admin_refuses_an_unsafe_model_name_with_the_rule_in_its_message() -> None:
    provider = Provider.objects.create(name="acme", kind="openai")
    admin = Client()
    admin.force_login(get_user_model().objects.create_superuser("names", "n@example.com", "pw-tests-only"))
    answer = admin.post(
        "/admin/completions/servedmodel/add/",
        {
            "provider": provider.pk,
            "name": "hdr\r\nX-Injected: yes",
            "enabled": "on",
            "options": "{}",
            "weight": 1,
            "prices-TOTAL_FORMS": "0",
            "prices-INITIAL_FORMS": "0",
        },
    )
    assert answer.status_code == 200 and "letters, digits and" in answer.content.decode()
    answer = admin.post("/admin/completions/modelgroup/add/", _group_form("a b"))
    assert answer.status_code == 200 and "letters, digits and" in answer.content.decode()
    assert not ServedModel.objects.exists() and not ModelGroup.objects.exists()


def test_provider_names_and_key_variables_refuse_a_trailing_newline() -> None:
    for field, value in (("name", "acme\n"), ("api_key_env", "OPENAI_API_KEY\n")):
        provider = Provider(name="acme", kind="openai")
        setattr(provider, field, value)
        with pytest.raises(ValidationError):
            provider.full_clean()


def _group_form(name: str) -> dict[str, str]:
    return {
        "name": name,
        "policy": "capacity",
        "scheduling": "fifo",
        "deployments-TOTAL_FORMS": "0",
        "deployments-INITIAL_FORMS": "0",
        "budget-TOTAL_FORMS": "0",
        "budget-INITIAL_FORMS": "0",
    }
