"""Fenced attempts: two attempts of one request (the first lost its lease and the request was run
again) race to the end, against the real Redis of the test run and the test database. Exactly
one outcome is recorded, one settlement charged, one slot held and freed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from completions.attempts import Outcome, outcome_apply
from completions.leases import Held, leases_renew
from completions.maintenance import SweepResult, _recover_running
from completions.models import CompletionRequest, CompletionStatus
from completions.providers import CompletionResult
from completions.services import api_key_create, completion_request_claim
from ratelimit import limiter

pytestmark = pytest.mark.django_db

TPM = 60  # a token a second, a bucket of 60: refill during the test stays far below 1 token


@pytest.fixture
def request_row() -> Iterator[CompletionRequest]:
    """A queued request of a limited model (one call at a time), in its line."""
    key, _ = api_key_create(name="fencing")
    row = CompletionRequest.objects.create(
        api_key=key,
        provider="mock",
        model=f"fence-{uuid.uuid4().hex[:8]}",
        payload={"messages": []},
        rate_limited=True,
        estimated_input_tokens=10,
        estimated_output_tokens=20,
    )
    assert row.line is not None
    limiter.configure(row.line, {"tpm": TPM, "burst": 60, "conc": 1})
    limiter.enqueue(row.line, str(row.id), input_tokens=10, output_tokens=20)
    yield row
    limiter.reset(row.line)


def succeeded(who: str) -> Outcome:
    result = CompletionResult(body={"who": who}, status=200, input_tokens=10, output_tokens=5)
    return Outcome(
        status=CompletionStatus.SUCCEEDED,
        settle="usage",
        input_tokens=10,
        output_tokens=5,
        upstream_status=200,
        result=result,
        metric_status=200,
    )


def start(row: CompletionRequest, token: str) -> CompletionRequest:
    assert row.line is not None
    grant = limiter.acquire(row.line, str(row.id), lease_seconds=30, token=token)
    assert grant.outcome == "go"
    claimed = completion_request_claim(request_id=str(row.id), token=token)
    assert claimed is not None
    return claimed


def in_flight(row: CompletionRequest) -> int:
    assert row.line is not None
    return limiter.status(row.line, input_tokens=0, output_tokens=0).in_flight


def tokens_left(row: CompletionRequest) -> float:
    assert row.line is not None
    level = limiter.status(row.line, input_tokens=0, output_tokens=0).levels["tokens"]
    assert level is not None
    return level


def test_two_attempts_of_one_request_end_in_one_outcome_one_settlement_one_slot(
    request_row: CompletionRequest,
) -> None:
    rid = str(request_row.id)
    first = start(request_row, "a" * 32)
    assert in_flight(request_row) == 1

    # Its lease ended (the tend found it missing twice): the request is taken from attempt 1,
    # its reservation returned, and it goes back to its place in line.
    result = SweepResult()
    _recover_running(rid, first.claim, result)
    assert result.rerun == 1
    assert CompletionRequest.objects.get(id=rid).status == CompletionStatus.QUEUED
    assert in_flight(request_row) == 0
    full = tokens_left(request_row)

    second = start(request_row, "b" * 32)
    assert in_flight(request_row) == 1

    # Attempt 1 was alive after all. Its renewal learns it lost the request...
    stale = Held(rid, first.claim, request_row.line, "", stall_seconds=60)
    leases_renew([stale])
    assert stale.lost
    # ...and its outcome changes nothing: not the row, not the reservation, not the slot.
    outcome_apply(request=first, line=request_row.line, outcome=succeeded("first"), seconds=1.0)
    row = CompletionRequest.objects.get(id=rid)
    assert (row.status, row.claim, row.response) == (CompletionStatus.RUNNING, "b" * 32, None)
    assert in_flight(request_row) == 1
    assert tokens_left(request_row) == pytest.approx(full - 30, abs=1)  # attempt 2's reservation only

    # The live attempt renews its lease and ends the request.
    live = Held(rid, second.claim, request_row.line, "", stall_seconds=60)
    leases_renew([live])
    assert not live.lost
    outcome_apply(request=second, line=request_row.line, outcome=succeeded("second"), seconds=1.0)
    row = CompletionRequest.objects.get(id=rid)
    assert (row.status, row.response, row.attempts) == (CompletionStatus.SUCCEEDED, {"who": "second"}, 2)
    assert in_flight(request_row) == 0
    # One settlement: 15 tokens used of the 30 reserved (10 in + 5 out), charged once.
    assert tokens_left(request_row) == pytest.approx(full - 15, abs=1)


def test_a_stale_retry_does_not_requeue_a_request_another_attempt_runs(
    request_row: CompletionRequest,
) -> None:
    rid = str(request_row.id)
    first = start(request_row, "c" * 32)
    _recover_running(rid, first.claim, SweepResult())
    second = start(request_row, "d" * 32)
    retry = Outcome(status=CompletionStatus.QUEUED, settle="refund", retry_in=0.5, error={"message": "502"})
    outcome_apply(request=first, line=request_row.line, outcome=retry, seconds=1.0)
    row = CompletionRequest.objects.get(id=rid)
    assert (row.status, row.claim) == (CompletionStatus.RUNNING, second.claim)
    assert request_row.line is not None
    assert not limiter.in_line(request_row.line, rid)  # not put back in line behind attempt 2
    assert in_flight(request_row) == 1
