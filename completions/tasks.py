"""Celery tasks: thin interfaces over services. The periodic ones (beat's schedule) run once per
period for the whole cluster, however many beats send them (completions.periodic).

While Redis is away (restarting, say) every task that needs it fails; Celery would log each with
its traceback at ERROR, hundreds a second. Instead a task that meets a Redis error ends, and the
outage is summarised: one WARNING when it starts, then one line per OUTAGE_REPORT_SECONDS with
how many tasks it stopped. Nothing is lost by ending them: their requests are in the database,
and the tend and the sweep put them back in line once Redis is back (as they would after a
failed task).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from celery import shared_task
from django.conf import settings
from redis.exceptions import RedisError

from balancer_project.logs import request_context
from completions import rows
from completions.attempts import completion_request_execute
from completions.periodic import once_per_period

logger = logging.getLogger(__name__)

OUTAGE_REPORT_SECONDS = 10.0


class RedisOutage:
    """Counts the tasks Redis errors stopped in this process, and says so now and then."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stopped = 0
        self.reported_at = float("-inf")

    @contextlib.contextmanager
    def summarised(self, task: str) -> Iterator[None]:
        try:
            yield
        except RedisError as exc:
            now = time.monotonic()
            with self.lock:
                self.stopped += 1
                if now - self.reported_at < OUTAGE_REPORT_SECONDS:
                    return
                stopped, self.stopped, self.reported_at = self.stopped, 0, now
            logger.warning(
                "Redis unreachable (%s: %s): %d task(s) stopped since the last report (the latest %s); "
                "their requests go back in line when it is back",
                exc.__class__.__name__,
                exc,
                stopped,
                task,
            )


redis_outage = RedisOutage()


@shared_task(name="completions.run", ignore_result=True, bind=True)
def run_completion(self: Any, request_id: str, line: str | None = None) -> None:
    """Run one attempt of a completion request. Routed to the queue llm.<provider>.<model>;
    `line` names the model's rate-limit line when the model has a quota."""
    queue = (self.request.delivery_info or {}).get("routing_key")
    try:
        with request_context(request_id), redis_outage.summarised("completions.run"):
            completion_request_execute(request_id=request_id, line=line, queue=queue)
    finally:
        rows.release_connection()


@shared_task(name="completions.wake", ignore_result=True)
def wake_line(line: str, at: str = "") -> None:
    """Start the head of a rate-limit line if it can start now (else the limiter schedules the
    next wake-up with the exact countdown). Published with a countdown; not a retry. `at`: the
    line's record of this wake-up (so the line knows it is the pending one, being served)."""
    try:
        # The request context is set to the head's id once the line says which request runs.
        with request_context("-"), redis_outage.summarised("completions.wake"):
            completion_request_execute(request_id=None, line=line, wake_at=at)
    finally:
        rows.release_connection()


@shared_task(name="completions.sweep", ignore_result=True)
def sweep() -> None:
    """Recover requests whose worker or Redis data was lost (Celery beat, every 30 s)."""
    from completions.maintenance import completion_requests_sweep

    with redis_outage.summarised("completions.sweep"):
        if _due("sweep"):
            completion_requests_sweep()


@shared_task(name="completions.tend", ignore_result=True, expires=10)
def tend() -> None:
    """The cluster's periodic care: outbox, Redis data loss, lines, new models (Celery beat,
    every BALANCER_TEND_SECONDS). `expires`: ticks that queued up while no worker was free are
    dropped rather than run one after another."""
    from completions.maintenance import tend as tend_cluster

    with redis_outage.summarised("completions.tend"):
        if _due("tend"):
            tend_cluster()


@shared_task(name="completions.batches", ignore_result=True, expires=30)
def batches() -> None:
    """Collect, submit and poll the providers' batch jobs (Celery beat, every
    BALANCER_BATCH_POLL_SECONDS; once at a time for the cluster: completions.batching)."""
    from completions.batching import batches_tend

    with redis_outage.summarised("completions.batches"):
        if _due("batches"):
            batches_tend()


@shared_task(name="completions.purge", ignore_result=True)
def purge() -> None:
    """Delete request history past BALANCER_RETENTION_DAYS (Celery beat, hourly)."""
    from completions.maintenance import completion_requests_purge

    with redis_outage.summarised("completions.purge"):
        if _due("purge"):
            completion_requests_purge()


def _due(entry: str) -> bool:
    """Whether this tick of the beat schedule's `entry` runs: once per its period for the
    cluster, however many beats send it (completions.periodic)."""
    return once_per_period(entry, float(settings.CELERY_BEAT_SCHEDULE[entry]["schedule"]))
