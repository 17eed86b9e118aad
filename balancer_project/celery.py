"""The Celery app, plus one worker bootstep that consumes every model's queue and reports the
worker alive for /ready."""

from __future__ import annotations

import gc
import logging
import os
import threading
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
    """Consume the queue of every served model, and report the worker alive for /ready.

    At start the step reads the registry once and consumes every model's queue (a model that is
    disabled keeps its queue consumed, so requests already waiting in it still finish); models
    added later reach running workers through beat's tend (`add_consumer` broadcasts). The
    heartbeat runs on a thread of its own: nothing periodic runs on the consumer's event loop,
    where it would stall message intake.
    """

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        from completions import shares
        from completions.providers import provider_for
        from completions.selectors import provider_configs_all, served_queue_names
        from completions.tokens import warm_up

        try:
            wanted = served_queue_names()
        except Exception:  # The database may be briefly unavailable: beat's tend announces them.
            logger.exception("could not read the model registry")
            wanted = set()
        if parent.controller is not None and parent.controller.concurrency:
            shares.configure(threads=int(parent.controller.concurrency))
        consuming = {q.name for q in parent.task_consumer.queues} if parent.task_consumer else set()
        for name in sorted(wanted - consuming):
            logger.info("consuming queue %s", name)
            parent.add_task_queue(name)
        try:
            # Build each provider's SDK client now (TLS context, connection pool: tens of ms) so
            # the first request after a grant does not pay for it on its way upstream.
            for config in provider_configs_all():
                provider_for(config)
            warm_up()
        except Exception:
            logger.exception("could not prepare the provider clients")
        # What is loaded by now lives as long as the worker; keep it out of the collector's
        # full passes (see balancer_project/asgi.py).
        gc.freeze()
        if self.thread is None or not self.thread.is_alive():
            self.stopping.clear()
            self.thread = threading.Thread(
                target=self.heartbeat, args=(parent.hostname,), name="balancer-heartbeat", daemon=True
            )
            self.thread.start()

    def stop(self, parent: Any) -> None:
        self.stopping.set()

    def heartbeat(self, hostname: str) -> None:
        from django.conf import settings
        from django.db import connection

        from completions.selectors import provider_configs_all
        from completions.workers import worker_heartbeat

        beat = 0
        while not self.stopping.is_set():
            credentialed = None
            if beat % 5 == 0:  # which providers this worker can call (/v1/models says so)
                try:
                    credentialed = [c.name for c in provider_configs_all() if c.api_key or c.kind == "mock"]
                except Exception:
                    logger.warning("could not read the providers for the credentials report", exc_info=True)
                finally:
                    connection.close()  # this thread's own connection, not a pooled one
            try:
                worker_heartbeat(hostname=hostname, credentialed=credentialed)
            except Exception:  # Redis away: /ready says so; try again next beat.
                logger.warning("could not write the worker heartbeat", exc_info=True)
            beat += 1
            self.stopping.wait(settings.BALANCER_WORKER_REFRESH_SECONDS)


app.steps["consumer"].add(ServedQueues)
