"""Celery tasks: thin interfaces over services."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from balancer_project.logs import request_context
from completions import rows
from completions.attempts import completion_request_execute


@shared_task(name="completions.run", ignore_result=True, bind=True)
def run_completion(self: Any, request_id: str, line: str | None = None) -> None:
    """Run one attempt of a completion request. Routed to the queue llm.<provider>.<model>;
    `line` names the model's rate-limit line when the model has a quota."""
    queue = (self.request.delivery_info or {}).get("routing_key")
    try:
        with request_context(request_id):
            completion_request_execute(request_id=request_id, line=line, queue=queue)
    finally:
        rows.release_connection()


@shared_task(name="completions.wake", ignore_result=True)
def wake_line(line: str, at: str = "") -> None:
    """Start the head of a rate-limit line if it can start now (else the limiter schedules the
    next wake-up with the exact countdown). Published with a countdown; not a retry. `at`: the
    line's record of this wake-up (so the line knows it is the pending one, being served)."""
    try:
        with request_context("-"):  # set to the head's id once the line says which request runs
            completion_request_execute(request_id=None, line=line, wake_at=at)
    finally:
        rows.release_connection()


@shared_task(name="completions.sweep", ignore_result=True)
def sweep() -> None:
    """Recover requests whose worker or Redis data was lost (Celery beat, every 30 s)."""
    from completions.maintenance import completion_requests_sweep

    completion_requests_sweep()


@shared_task(name="completions.tend", ignore_result=True, expires=10)
def tend() -> None:
    """The cluster's periodic care: outbox, Redis data loss, lines, new models (Celery beat,
    every BALANCER_TEND_SECONDS). `expires`: ticks that queued up while no worker was free are
    dropped rather than run one after another."""
    from completions.maintenance import tend as tend_cluster

    tend_cluster()


@shared_task(name="completions.purge", ignore_result=True)
def purge() -> None:
    """Delete request history past BALANCER_RETENTION_DAYS (Celery beat, hourly)."""
    from completions.maintenance import completion_requests_purge

    completion_requests_purge()
