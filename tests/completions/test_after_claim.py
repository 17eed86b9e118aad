"""Any error after the claim: a failure injected at each step between claiming a request and
recording its outcome, with the mock provider, the test database and the real Redis. Every
request ends settled — run again from its own place, or ended with a reason — and an answer
already paid for is never lost."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import OperationalError

from completions import attempts
from completions.attempts import completion_request_execute
from completions.models import CompletionRequest, CompletionStatus
from tests.completions.test_execution import make_request

pytestmark = pytest.mark.django_db


def failing_once(real: Any, exc: Exception) -> Any:
    calls = {"n": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise exc
        return real(*args, **kwargs)

    return wrapper


def test_the_database_refusing_the_registry_read_after_the_claim_runs_it_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    request = make_request()
    monkeypatch.setattr(
        attempts,
        "provider_config_get",
        failing_once(attempts.provider_config_get, OperationalError("database is locked")),
    )
    completion_request_execute(request_id=str(request.id), line=None, queue=request.queue_name)
    request.refresh_from_db()
    # Queued again for a second attempt (its task is published with a countdown), with the reason.
    assert (request.status, request.attempts) == (CompletionStatus.QUEUED, 1)
    assert "database is locked" in request.error["message"] and request.error["transient"]
    completion_request_execute(request_id=str(request.id), line=None, queue=request.queue_name)
    request.refresh_from_db()
    assert (request.status, request.attempts) == (CompletionStatus.SUCCEEDED, 2)


def test_a_broken_provider_after_the_claim_fails_the_request_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    request = make_request()

    def broken(config: Any) -> Any:
        raise ValueError("no such SDK option")

    monkeypatch.setattr(attempts, "provider_for", broken)
    completion_request_execute(request_id=str(request.id), line=None, queue=request.queue_name)
    request.refresh_from_db()
    assert request.status == CompletionStatus.FAILED
    assert "no such SDK option" in request.error["message"]
    assert request.finished_at is not None


def test_a_deadline_that_passed_before_an_unlimited_models_request_started_expires_it() -> None:
    request = make_request()
    CompletionRequest.objects.filter(id=request.id).update(max_wait=0.0)
    completion_request_execute(request_id=str(request.id), line=None, queue=request.queue_name)
    request.refresh_from_db()
    assert request.status == CompletionStatus.EXPIRED
    assert request.response is None


def test_redis_failing_after_the_answer_keeps_the_paid_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    import redis

    request = make_request()
    real = attempts.get_redis

    class Unreachable:
        """Redis as it is during a restart: a pipeline's execute fails to connect."""

        def pipeline(self, **kwargs: Any) -> Any:
            pipe = real().pipeline(**kwargs)

            def execute(**kw: Any) -> Any:
                raise redis.ConnectionError("Error 111 connecting to redis")

            pipe.execute = execute
            return pipe

    monkeypatch.setattr(attempts, "get_redis", Unreachable)
    completion_request_execute(request_id=str(request.id), line=None, queue=request.queue_name)
    request.refresh_from_db()
    assert request.status == CompletionStatus.SUCCEEDED
    assert request.output_tokens == 2 and request.response is not None
