"""Running and cancelling a request, called directly: once however often delivered, models disabled or deleted meanwhile, cancelled ones skipped."""

from __future__ import annotations

from typing import Any

import pytest

from completions.attempts import completion_request_execute
from completions.config import config_apply
from completions.models import CompletionRequest, CompletionStatus, ServedModel
from completions.services import api_key_create, completion_request_cancel

pytestmark = pytest.mark.django_db


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
