"""Celery tasks: thin interfaces over services."""

from __future__ import annotations

from celery import shared_task

from completions.services import completion_request_execute


@shared_task(name="completions.run", ignore_result=True)
def run_completion(request_id: str) -> None:
    """Run one attempt of a completion request. Routed to the queue llm.<provider>.<model>."""
    completion_request_execute(request_id=request_id)
