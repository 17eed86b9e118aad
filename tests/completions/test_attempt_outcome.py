"""What an attempt comes to (attempt_outcome, a pure function): failover, fallback, settlement, retries, crashes."""

from __future__ import annotations

from typing import Any

import pytest

from completions.attempts import Call, attempt_outcome
from completions.providers import CompletionResult, ProviderError
from completions.providers.base import error_from_response

pytestmark = pytest.mark.django_db


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
