"""What applying an attempt's outcome does, decided without I/O (completions.outcomes): the row,
the announcement, the settlements, the provider's limits, the metrics and the next step."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from completions.models import CompletionRequest, ModelGroup, Provider, ServedModel
from completions.outcomes import Call, Outcome, SettleStep, attempt_outcome, outcome_plan
from completions.providers import CompletionResult, ProviderError
from completions.routing import Route
from ratelimit.limiter import Health, Retry, SettleMode

NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


def request(**fields: Any) -> CompletionRequest:
    base: dict[str, Any] = {
        "id": uuid.UUID(int=7),
        "api_key_id": 3,
        "provider": "openai",
        "model": "gpt-x",
        "payload": {},
        "attempts": 1,
        "estimated_input_tokens": 10,
        "estimated_output_tokens": 100,
        "created_at": NOW,
        "started_at": NOW + timedelta(seconds=2),
        "claimed_at": NOW + timedelta(seconds=2),
        "claim": "t1",
    }
    return CompletionRequest(**{**base, **fields})


def decide(call: Call, **kw: Any) -> Outcome:
    return attempt_outcome(call=call, estimate=(10, 100), attempts=1, left=None, backoff=0.5, **kw)


def plan(req: CompletionRequest, outcome: Outcome, line: str | None, **kw: Any) -> Any:
    args: dict[str, Any] = {"seconds": 1.5, "headers": {}, "deployment": None, "left": None, **kw}
    return outcome_plan(request=req, line=line, outcome=outcome, **args)


def test_a_success_records_announces_and_settles_both_lines_at_its_usage() -> None:
    result = CompletionResult(body={"ok": 1}, status=200, input_tokens=9, output_tokens=4, text='{"ok": 1}')
    p = plan(request(key_limited=True), decide(Call(result=result, seconds=1.5)), "openai/gpt-x")
    assert p.status == "succeeded"
    assert p.row["response"] == {"ok": 1} and (p.row["input_tokens"], p.row["output_tokens"]) == (9, 4)
    assert p.announce is not None and p.announce["reply_text"] == '{"ok": 1}'
    assert p.announce["queue_seconds"] == 2.0 and p.announce["deployment"] == "openai/gpt-x"
    model, key = p.settlements
    assert (model.line, model.mode, model.input_tokens, model.output_tokens, model.fenced) == (
        "openai/gpt-x",
        SettleMode.USAGE,
        9,
        4,
        True,
    )
    assert (key.line, key.fenced, key.retry) == ("key:3", False, None)
    assert p.metric is not None and p.metric["queue_seconds"] == 2.0 and p.metric["upstream_seconds"] == 1.5
    assert (p.republish_in, p.deliver) == (None, False)


def test_a_retry_goes_back_to_its_own_place_or_its_task_comes_back() -> None:
    flaky = ProviderError("upstream 503", transient=True, status=503, fault="error")
    limited = plan(request(key_limited=True), decide(Call(error=flaky)), "openai/gpt-x", left=30.0)
    assert limited.status == "queued" and limited.announce is None
    (step,) = limited.settlements  # the key's reservation is held until the request ends
    assert step.retry == Retry(0.5, 30.0) and step.mode == SettleMode.KEEP
    assert limited.republish_in is None
    unlimited = plan(request(), decide(Call(error=flaky)), None)
    assert unlimited.settlements == () and unlimited.republish_in == 0.5
    assert "trying again in 0.50 s" in unlimited.log


def test_a_request_its_group_cannot_serve_moves_to_the_fallback_in_the_same_row_write() -> None:
    provider = Provider(name="pool-a", kind="openai")
    fallback = ModelGroup(name="gpt-pool")
    route = Route(
        group="gpt-pool",
        deployments=[ServedModel(pk=5, provider=provider, name="gpt-pool")],
        mask="",
        cost=(11, 50),
    )
    refused = ProviderError("bad key", transient=False, status=401, fault="auth")
    outcome = decide(Call(error=refused), fallback=(fallback, route))
    p = plan(request(group="gpt-refused"), outcome, "group:gpt-refused")
    assert p.status == "queued" and p.deliver
    assert {
        k: p.row[k] for k in ("group", "fallback_from", "provider", "model", "estimated_input_tokens")
    } == {
        "group": "gpt-pool",
        "fallback_from": "gpt-refused",
        "provider": "pool-a",
        "model": "gpt-pool",
        "estimated_input_tokens": 11,
    }
    # Its old line's reservation goes back without a re-entry there; its deployment cools down.
    assert p.settlements == (
        SettleStep("group:gpt-refused", SettleMode.TOKENS, 10, 100, retry=None, health=Health("auth")),
    )


def test_the_attempts_deployment_and_the_providers_limits_are_recorded() -> None:
    deployment = ServedModel(pk=8, provider=Provider(name="pool-b", kind="openai"), name="gpt-pool")
    result = CompletionResult(body={}, status=200, input_tokens=1, output_tokens=1)
    headers = {"x-ratelimit-limit-requests": "60", "x-ratelimit-limit-tokens": "1000"}
    p = plan(
        request(served_by=[{"attempt": 0}]),
        decide(Call(result=result)),
        "group:g",
        headers=headers,
        deployment=deployment,
    )
    assert p.row["served_by"][-1] == {"attempt": 1, "deployment": "pool-b/gpt-pool", "status": 200}
    assert p.adapt is not None and (p.adapt.line, p.adapt.deployment) == ("group:g", "8")
    assert p.adapt.reported == {"rpm": 60.0, "tpm": 1000.0}


def test_nothing_called_means_nothing_measured() -> None:
    p = plan(
        request(),
        Outcome(status="failed", settle=SettleMode.REFUND, error={"message": "gone"}),
        None,
        seconds=None,
    )
    assert p.metric is None and p.announce is not None and p.announce["deployment"] == ""
