"""Unit tests: services, the registry file, cost estimates and provider error handling, called
directly (no web or worker process)."""

from __future__ import annotations

import json
import re
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from completions.attempts import Call, attempt_outcome, completion_request_execute
from completions.config import ConfigError, config_apply, config_load
from completions.models import ApiKey, CompletionRequest, CompletionStatus, Provider, ServedModel
from completions.providers import CompletionResult, ProviderConfig, ProviderError
from completions.providers.base import error_from_response, retry_after_seconds
from completions.providers.mock import MockProvider
from completions.selectors import api_key_get_by_raw, provider_config_get
from completions.services import api_key_create, completion_request_cancel, retry_countdown
from completions.tokens import estimate_input_tokens, requested_output_cap

pytestmark = pytest.mark.django_db


def registry(**provider: Any) -> dict[str, Any]:
    return {"providers": [{"name": "local", "kind": "openai", "models": ["m1"], **provider}]}


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


# -- cost estimates ----------------------------------------------------------------------------


def test_input_estimate_counts_messages_system_and_tools() -> None:
    base = estimate_input_tokens({"messages": [{"role": "user", "content": "x" * 400}]})
    assert base == 3 + 3 + 100
    with_system = estimate_input_tokens(
        {"system": "y" * 40, "messages": [{"role": "user", "content": "x" * 400}]}
    )
    assert with_system == base + 3 + 10
    parts = estimate_input_tokens(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 400}]}]}
    )
    assert parts == base


def test_output_cap_comes_from_whichever_field_the_api_uses() -> None:
    assert requested_output_cap({"max_tokens": 10}) == 10
    assert requested_output_cap({"max_completion_tokens": 20, "max_tokens": 10}) == 20
    assert requested_output_cap({"max_output_tokens": 30}) == 30
    assert requested_output_cap({"max_tokens": True}) is None
    assert requested_output_cap({}) is None


# -- provider errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "transient"),
    [(400, False), (401, False), (404, False), (408, True), (429, True), (500, True), (529, True)],
)
def test_upstream_statuses_are_classified(status: int, transient: bool) -> None:
    assert error_from_response(status, {}, {}).transient is transient


def test_spend_limit_429_is_permanent_and_upstream_message_is_kept() -> None:
    body = {"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}}
    error = error_from_response(429, body, {}, spend_limit=True)
    assert error.transient is False
    assert error.as_error() == {
        "message": "You exceeded your current quota",
        "transient": False,
        "upstream": body,
    }


def test_retry_after_prefers_milliseconds_and_backoff_honours_it() -> None:
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "3"}) == 0.25
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert retry_countdown(attempt=1, retry_after=5.0) >= 5.0
    assert all(0 < retry_countdown(attempt=n, retry_after=None) <= 1.0 for n in range(1, 10))


# -- mock provider -----------------------------------------------------------------------------


def mock(**options: Any) -> MockProvider:
    return MockProvider(
        ProviderConfig.build(
            name="mock",
            kind="mock",
            base_url="",
            api_key_env="",
            default_key_env="",
            timeout=10,
            options={"latency_ms": 0, "chunk_ms": 0, **options},
        )
    )


def test_mock_streams_openai_chunks_with_a_final_usage_chunk() -> None:
    payload = {
        "model": "m",
        "max_tokens": 4,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi"}],
    }
    chunks = list(mock().stream_objects(payload))
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == mock().complete(payload).body["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    sse_events = list(mock().stream(payload))
    assert sse_events[-1].data == "[DONE]" and len(sse_events) == len(chunks) + 1


def test_mock_streams_anthropic_events_in_order() -> None:
    events = list(mock(format="anthropic").stream_objects({"model": "m", "max_tokens": 3, "messages": []}))
    names = [e["event"] for e in events]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert names.count("content_block_delta") == 3
    assert events[-2]["data"]["usage"]["output_tokens"] == 3


# -- execution and cancellation ----------------------------------------------------------------


def make_request(**fields: Any) -> CompletionRequest:
    config_apply(
        {
            "providers": [
                {"name": "mock", "kind": "mock", "options": {"latency_ms": 0}, "models": ["mock-gpt"]}
            ]
        }
    )
    key, _ = api_key_create(name="unit")
    return CompletionRequest.objects.create(
        api_key=key,
        provider="mock",
        model="mock-gpt",
        payload={"model": "mock-gpt", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
        **fields,
    )


def test_execute_runs_a_request_once_even_when_the_message_is_delivered_twice() -> None:
    request = make_request()
    completion_request_execute(request_id=str(request.id), line=None)
    completion_request_execute(request_id=str(request.id), line=None)  # a redelivered message
    request.refresh_from_db()
    assert request.status == CompletionStatus.SUCCEEDED
    assert request.attempts == 1
    assert request.output_tokens == 2
    assert request.started_at is not None and request.finished_at >= request.started_at


def test_a_request_for_a_model_disabled_meanwhile_is_still_served() -> None:
    request = make_request()
    served = ServedModel.objects.get(name="mock-gpt")
    served.enabled = False
    served.save()
    assert served.draining  # its queue stays consumed while requests wait for it
    completion_request_execute(request_id=str(request.id), line=None)
    request.refresh_from_db()
    assert request.status == CompletionStatus.SUCCEEDED


def test_a_model_disabled_in_the_registry_file_drains_or_cancels_its_waiting_requests(
    django_capture_on_commit_callbacks: Any,
) -> None:
    kept, dropped = make_request(), make_request()
    CompletionRequest.objects.filter(id=dropped.id).update(model="mock-old")
    config_apply({"providers": [{"name": "mock", "kind": "mock", "models": ["mock-gpt", "mock-old"]}]})
    with django_capture_on_commit_callbacks(execute=True):
        config_apply(
            {
                "providers": [
                    {
                        "name": "mock",
                        "kind": "mock",
                        "models": [
                            {"name": "mock-gpt", "enabled": False},
                            {"name": "mock-old", "enabled": False, "waiting": "cancel"},
                        ],
                    }
                ]
            }
        )
    kept.refresh_from_db()
    dropped.refresh_from_db()
    assert kept.status == CompletionStatus.QUEUED and ServedModel.objects.get(name="mock-gpt").draining
    assert dropped.status == CompletionStatus.CANCELLED
    assert dropped.error["message"] == "Cancelled: mock/mock-old was disabled (registry file)."


def test_execute_skips_a_cancelled_request() -> None:
    request = make_request()
    assert completion_request_cancel(request=request) is True
    completion_request_execute(request_id=str(request.id), line=None)
    request.refresh_from_db()
    assert request.status == CompletionStatus.CANCELLED
    assert request.attempts == 0 and request.response is None


def test_a_started_request_cannot_be_cancelled() -> None:
    request = make_request(status=CompletionStatus.RUNNING)
    assert completion_request_cancel(request=request) is False
    assert request.status == CompletionStatus.RUNNING


def test_a_request_for_a_model_deleted_meanwhile_fails_clearly() -> None:
    request = make_request()
    ServedModel.objects.filter(name="mock-gpt").delete()
    completion_request_execute(request_id=str(request.id), line=None)
    request.refresh_from_db()
    assert request.status == CompletionStatus.FAILED
    assert request.error["message"] == "mock/mock-gpt is no longer served"


def test_retry_timing_falls_back_to_the_rate_limit_reset_headers() -> None:
    from datetime import datetime

    from completions.providers.base import parse_duration

    assert (
        parse_duration("6m0s") == 360
        and parse_duration("12ms") == 0.012
        and parse_duration("1h2m3.5s") == 3723.5
    )
    assert parse_duration("soon") is None
    assert (
        retry_after_seconds({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}) == 360
    )
    later = datetime.fromtimestamp(datetime.now(UTC).timestamp() + 30, UTC).isoformat()
    assert 28 <= (retry_after_seconds({"anthropic-ratelimit-tokens-reset": later}) or 0) <= 30
    assert retry_after_seconds({"retry-after": "2", "x-ratelimit-reset-tokens": "6m0s"}) == 2


def test_provider_keys_can_come_from_secret_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "openai-key"
    secret.write_text("sk-from-a-file\n")
    monkeypatch.delenv("FILED_API_KEY", raising=False)
    monkeypatch.setenv("FILED_API_KEY_FILE", str(secret))
    config = ProviderConfig.build(
        name="p",
        kind="openai",
        base_url="",
        api_key_env="FILED_API_KEY",
        default_key_env="",
        timeout=5,
        options={},
    )
    assert config.api_key == "sk-from-a-file"


# -- the outcome of an attempt (a pure function) ---------------------------------------------------


def outcome(
    call: Call,
    attempts: int = 1,
    left: float | None = None,
    backoff: float = 0.5,
    deployments: int = 1,
    fallback: Any = None,
) -> Any:
    return attempt_outcome(
        call=call,
        estimate=(10, 100),
        attempts=attempts,
        left=left,
        backoff=backoff,
        deployments=deployments,
        fallback=fallback,
    )


@pytest.mark.parametrize(
    ("status", "fault"), [(401, "auth"), (403, "auth"), (500, "error"), (503, "error"), (400, ""), (429, "")]
)
def test_an_upstream_error_says_what_it_shows_of_the_deployment(status: int, fault: str) -> None:
    assert error_from_response(status, {}, {}).fault == fault


def test_in_a_group_a_broken_deployment_fails_over_at_once_and_reports_its_health() -> None:
    refused = ProviderError("bad key", transient=False, status=401, fault="auth")
    alone = outcome(Call(error=refused))
    assert (alone.status, alone.health.fault) == ("failed", "auth")  # nowhere else to go
    moved = outcome(Call(error=refused), deployments=3)
    assert (moved.status, moved.retry_in, moved.settle) == ("queued", 0.0, "tokens")
    down = ProviderError("could not reach upstream", transient=True, fault="down")
    assert outcome(Call(error=down), deployments=2, backoff=5.0).retry_in == 0.0
    # The attempts it may make grow with the deployments it may try; its deadline still binds.
    assert outcome(Call(error=down), attempts=5, deployments=2).status == "queued"
    assert outcome(Call(error=down), attempts=6, deployments=2).status == "failed"
    # An error that is the request's own fault is not tried elsewhere.
    assert (
        outcome(Call(error=ProviderError("bad", transient=False, status=400)), deployments=3).status
        == "failed"
    )
    ok = outcome(
        Call(result=CompletionResult(body={}, status=200, input_tokens=1, output_tokens=1), seconds=0.25),
        deployments=2,
    )
    assert ok.health is not None and (ok.health.fault, ok.health.latency) == ("ok", 0.25)


def test_what_its_group_cannot_serve_goes_to_its_fallback_instead_of_failing() -> None:
    fallback: Any = ("a fallback group", "its route")
    refused = ProviderError("bad key", transient=False, status=401, fault="auth")
    referred = outcome(Call(error=refused), fallback=fallback)
    assert (referred.status, referred.fallback, referred.final, referred.settle) == (
        "queued",
        fallback,
        False,
        "tokens",
    )
    # Its only deployment unreachable: to the fallback at once, not retried in a group cooling down.
    down = ProviderError("could not reach upstream", transient=True, fault="down")
    assert outcome(Call(error=down), fallback=fallback).fallback == fallback
    # Elsewhere in its own group first, while it has somewhere else to go.
    assert outcome(Call(error=refused), deployments=2, fallback=fallback).fallback is None
    # Its own fault (a 400) or a deadline already passed: it fails as before.
    bad = ProviderError("bad", transient=False, status=400)
    assert outcome(Call(error=bad), fallback=fallback).status == "failed"
    assert outcome(Call(error=refused), left=-1.0, fallback=fallback).status == "failed"


def test_a_success_is_settled_with_its_real_usage_or_else_the_reservation() -> None:
    done = outcome(Call(result=CompletionResult(body={}, status=200, input_tokens=9, output_tokens=3)))
    assert (done.status, done.settle, done.input_tokens, done.output_tokens) == ("succeeded", "usage", 9, 3)
    assert done.final
    unreported = outcome(
        Call(result=CompletionResult(body={}, status=200, input_tokens=None, output_tokens=None))
    )
    assert (unreported.input_tokens, unreported.output_tokens) == (10, 100)


def test_a_provider_429_is_retried_refunded_and_reported_as_news_about_its_bucket() -> None:
    exc = ProviderError(
        "slow down",
        transient=True,
        status=429,
        retry_after=2.0,
        headers={"x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "512"},
    )
    o = outcome(Call(error=exc), backoff=2.0)
    assert (o.status, o.settle, o.retry_in) == ("queued", "refund", 2.0)
    assert o.throttled is not None and o.throttled.hold == 2.0
    assert o.throttled.remaining == {"req": 0.0, "tok": 512.0}


def test_transient_errors_stop_being_retried_at_the_attempt_limit_or_the_deadline() -> None:
    exc = ProviderError("boom", transient=True, status=500)
    assert outcome(Call(error=exc)).settle == "keep"
    assert outcome(Call(error=exc), attempts=3).status == "failed"  # BALANCER_MAX_ATTEMPTS
    late = outcome(Call(error=exc), left=0.2, backoff=0.5)
    assert (late.status, late.retry_in) == ("failed", None)


def test_a_refused_request_keeps_its_request_count_and_gives_its_tokens_back() -> None:
    o = outcome(Call(error=ProviderError("bad", transient=False, status=400)))
    assert (o.status, o.settle, o.upstream_status, o.throttled) == ("failed", "tokens", 400, None)


def test_a_client_gone_mid_stream_is_cancelled_and_charged_for_what_streamed() -> None:
    o = outcome(Call(cancelled=CompletionResult(body={}, status=200, input_tokens=10, output_tokens=4)))
    assert (o.status, o.settle, o.output_tokens) == ("cancelled", "usage", 4)


def test_our_own_crash_fails_the_request_and_gives_everything_back() -> None:
    o = outcome(Call(crashed=True))
    assert (o.status, o.settle) == ("failed", "refund")


# -- the outbox --------------------------------------------------------------------------------


def test_a_request_from_the_outbox_takes_its_place_by_arrival_ahead_of_later_ones() -> None:
    from completions.maintenance import completion_requests_redeliver
    from completions.services import completion_request_deliver
    from ratelimit import limiter

    config_apply(
        {
            "providers": [
                {
                    "name": "unit",
                    "kind": "mock",
                    "models": [
                        {"name": "outbox-order", "quota": {"requests_per_minute": 60, "burst_seconds": 1}}
                    ],
                }
            ]
        }
    )
    key, _ = api_key_create(name="outbox")
    line = "unit/outbox-order"
    limiter.reset(line)

    def accept(**fields: Any) -> CompletionRequest:
        return CompletionRequest.objects.create(
            api_key=key, provider="unit", model="outbox-order", rate_limited=True, payload={}, **fields
        )

    try:
        # Accepted while Redis was unreachable: it waits in the outbox.
        early = accept(undelivered=True)
        # Redis is back; a later request goes straight into line, before the tend runs.
        later = accept()
        completion_request_deliver(request=later, waits_for_key=False)
        assert completion_requests_redeliver() == 1
        # The early one stands ahead of the later one: the line is ordered by arrival.
        heads = [limiter.acquire(line, None, lease_seconds=60) for _ in range(2)]
        assert [(g.outcome, g.request_id) for g in heads] == [("go", str(early.id)), ("go", str(later.id))]
    finally:
        limiter.reset(line)
