"""The registry file (apply_config): providers, models, groups and keys created and updated, all or nothing; bad files refused with the reason."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from completions.config import ConfigError, config_apply, config_load
from completions.models import ApiKey, CompletionRequest, CompletionStatus, Provider, ServedModel
from completions.selectors import provider_config_get
from completions.services import api_key_create

pytestmark = pytest.mark.django_db


def registry(**provider: Any) -> dict[str, Any]:
    return {"providers": [{"name": "local", "kind": "openai", "models": ["m1"], **provider}]}


# -- registry file -----------------------------------------------------------------------------


def test_registry_file_creates_and_updates_providers_and_models(tmp_path: Path) -> None:
    path = tmp_path / "reg.yaml"
    path.write_text(
        "providers:\n"
        "  - {name: groq, kind: openai, base_url: 'https://api.groq.com/openai/v1', api_key_env: GROQ_API_KEY,\n"
        "     models: [llama-3.1-8b-instant, {name: old, enabled: false}]}\n"
    )
    call_command("apply_config", str(path))
    groq = Provider.objects.get(name="groq")
    assert groq.base_url == "https://api.groq.com/openai/v1"
    assert {(m.name, m.enabled) for m in groq.models.all()} == {
        ("llama-3.1-8b-instant", True),
        ("old", False),
    }

    json_path = tmp_path / "reg.json"
    json_path.write_text(json.dumps(registry(name="groq", timeout_seconds=5, models=["old"])))
    call_command("apply_config", str(json_path))
    groq.refresh_from_db()
    assert groq.kind == "openai" and groq.timeout_seconds == 5
    assert groq.models.get(name="old").enabled is True
    assert groq.models.count() == 2  # entries the file does not name are left alone


def test_registry_file_declares_model_groups_and_their_deployments() -> None:
    from completions.models import ModelGroup

    config_apply(
        {
            "groups": [{"name": "gpt-4o", "policy": "round_robin", "fallback": "new-group"}],
            "providers": [
                {"name": "org1", "kind": "openai", "models": [{"name": "gpt-4o", "group": "gpt-4o"}]},
                {
                    "name": "org2",
                    "kind": "openai",
                    "models": [{"name": "gpt-4o-2024", "group": "gpt-4o", "weight": 3}, "other"],
                },
                {"name": "org3", "kind": "openai", "models": [{"name": "m", "group": "new-group"}]},
            ],
        }
    )
    group = ModelGroup.objects.get(name="gpt-4o")
    assert (group.policy, str(group.fallback)) == ("round_robin", "new-group")  # named later in the file
    assert sorted((str(m), m.weight) for m in group.deployments.all()) == [
        ("org1/gpt-4o", 1),
        ("org2/gpt-4o-2024", 3),
    ]
    assert ModelGroup.objects.get(name="new-group").policy == "capacity"  # named by a model: created
    assert ServedModel.objects.get(name="other").group is None
    # Applied again with group: null, the model leaves its group; everything else stays.
    config_apply(
        {"providers": [{"name": "org1", "kind": "openai", "models": [{"name": "gpt-4o", "group": None}]}]}
    )
    assert [str(m) for m in ModelGroup.objects.get(name="gpt-4o").deployments.all()] == ["org2/gpt-4o-2024"]


def test_a_removed_group_keeps_its_queue_consumed_while_requests_wait_for_it() -> None:
    from completions.models import ModelGroup
    from completions.selectors import queued_group_names, served_queue_names

    config_apply(
        {
            "groups": [{"name": "kept"}, {"name": "removed"}],
            "providers": [
                {
                    "name": "mock",
                    "kind": "mock",
                    "models": [{"name": "a", "group": "kept"}, {"name": "b", "group": "removed"}, "plain"],
                }
            ],
        }
    )
    key, _ = api_key_create(name="groups")
    row = {"api_key": key, "provider": "mock", "model": "b", "payload": {}}
    CompletionRequest.objects.create(**row, group="removed")
    CompletionRequest.objects.create(**row, group="gone-and-done", status=CompletionStatus.SUCCEEDED)
    CompletionRequest.objects.create(**row)  # sent to the model by name: no group
    ModelGroup.objects.filter(name="removed").delete()
    assert queued_group_names() == {"removed"}
    assert served_queue_names() == {
        "llm.mock.a",
        "llm.mock.b",
        "llm.mock.plain",
        "llm.group:kept",
        "llm.group:removed",  # drains what waits for it
    }


def test_registry_file_sets_client_keys_weights_and_highest_priority() -> None:
    api_key_create(name="batch-jobs")
    api_key_create(name="batch-jobs")
    other, _ = api_key_create(name="chat")
    config_apply({"providers": [], "keys": [{"name": "batch-jobs", "weight": 5, "max_priority": "batch"}]})
    assert set(ApiKey.objects.filter(name="batch-jobs").values_list("weight", "max_priority")) == {
        (5, "batch")
    }
    other.refresh_from_db()
    assert (other.weight, other.max_priority) == (1, "default")  # keys the file does not name: untouched
    for bad, message in (
        ({"name": "nobody"}, "no API key is named 'nobody'"),
        ({"name": "chat", "weight": 0}, "weight"),
        ({"name": "chat", "max_priority": "urgent"}, "max_priority"),
        ({"name": "chat", "colour": "blue"}, "unknown field(s) colour"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            config_apply({"providers": [], "keys": [bad]})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"providers": {}}, "'providers' must be a list"),
        (registry(kind="azure"), "kind must be one of"),
        (registry(api_key_env="sk-live-123"), "never the key itself"),
        (registry(name="Bad Name"), "Lower-case"),
        (registry(base_url="not a url"), "base_url"),
        (registry(models=[{"enabled": True}]), "must be a model name"),
        (registry(colour="blue"), "unknown field(s) colour"),
        ({"providers": [], "extra": 1}, "unknown field(s) extra"),
        (registry(models=[{"name": "m1", "group": "key:1"}]), "may not start with 'key:'"),
        (registry(models=[{"name": "m1", "group": "a b"}]), "no spaces"),
        (registry(models=[{"name": "m1", "weight": 0}]), "weight"),
        ({**registry(), "groups": [{"name": "g", "policy": "random"}]}, "policy"),
        ({**registry(), "groups": [{"name": "g", "colour": "blue"}]}, "unknown field(s) colour"),
        ({**registry(), "groups": [{"name": "g", "fallback": "nope"}]}, "no group is named 'nope'"),
        ({**registry(), "groups": [{"name": "g", "fallback": "g"}]}, "cannot be its own fallback"),
        (registry(models=[{"name": "m1", "enabled": False, "waiting": "drop"}]), "must be drain or cancel"),
    ],
)
def test_invalid_registry_is_refused_and_writes_nothing(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_apply(data)
    assert not Provider.objects.filter(name="local").exists()


def test_a_registry_with_a_bad_second_entry_applies_nothing() -> None:
    data = {"providers": [registry()["providers"][0], {"name": "x", "kind": "nope"}]}
    with pytest.raises(ConfigError):
        config_apply(data)
    assert not Provider.objects.filter(name="local").exists()


def test_unreadable_registry_file_is_a_clear_command_error(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="cannot read"):
        call_command("apply_config", str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config_load(bad)


def test_provider_config_reads_the_key_from_the_environment_and_never_stores_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOCAL_API_KEY", "sk-secret-value")
    config_apply(registry(api_key_env="LOCAL_API_KEY", options={"a": 1}))
    ServedModel.objects.filter(name="m1").update(options={"b": 2})
    config = provider_config_get(provider="local", model="m1")
    assert config is not None
    assert config.api_key == "sk-secret-value"
    assert "sk-secret-value" not in repr(config)
    assert config.option("a") == 1 and config.option("b") == 2
    assert "sk-secret-value" not in json.dumps(list(Provider.objects.values()), default=str)
