"""The Celery app, plus one worker bootstep that keeps each worker's queues in step with the
model registry and reports the worker alive for /ready."""

from __future__ import annotations

import gc
import logging
import os
from typing import Any

from celery import Celery, bootsteps

from balancer_project import broker

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "balancer_project.settings.local")
broker.install()

logger = logging.getLogger(__name__)

app = Celery("balancer")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


class ServedQueues(bootsteps.StartStopStep):
    """Consume the queue of every served model, including models added while the worker runs,
    and tend the rate-limit lines.

    Every BALANCER_WORKER_REFRESH_SECONDS the step reads the enabled models from the database,
    starts consuming any queue it does not consume yet, writes a heartbeat to Redis, and runs the
    rate limiter's periodic care (ratelimit.services.lines_tend). A model that is disabled keeps
    its queue consumed, so requests already waiting in it still finish.
    """

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer_entry: Any = None

    def start(self, parent: Any) -> None:
        from django.conf import settings

        self.refresh(parent)
        # What is loaded by now lives as long as the worker; keep it out of the collector's
        # full passes (see balancer_project/asgi.py).
        gc.freeze()
        self.timer_entry = parent.timer.call_repeatedly(
            settings.BALANCER_WORKER_REFRESH_SECONDS, self.refresh, (parent,), priority=10
        )

    def stop(self, parent: Any) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None

    def refresh(self, consumer: Any) -> None:
        from completions.providers import provider_for
        from completions.selectors import provider_configs_all, served_queue_names
        from completions.services import worker_heartbeat
        from completions.tokens import warm_up
        from ratelimit.services import lines_tend

        try:
            wanted = served_queue_names()
        except Exception:  # The database may be briefly unavailable; try again next tick.
            logger.exception("could not read the model registry")
            return
        consuming = {q.name for q in consumer.task_consumer.queues} if consumer.task_consumer else set()
        for name in sorted(wanted - consuming):
            logger.info("consuming queue %s", name)
            consumer.add_task_queue(name)
        try:
            # Build each provider's SDK client now (TLS context, connection pool: tens of ms) so
            # the first request after a grant does not pay for it on its way upstream.
            for config in provider_configs_all():
                provider_for(config)
            warm_up()
        except Exception:
            logger.exception("could not prepare the provider clients")
        try:
            worker_heartbeat(hostname=consumer.hostname)
        except Exception:
            logger.exception("could not write the worker heartbeat")
        try:
            lines_tend()
        except Exception:
            logger.exception("could not tend the rate-limit lines")


app.steps["consumer"].add(ServedQueues)
