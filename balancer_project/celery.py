"""The Celery app, plus one worker bootstep that consumes every model's queue and reports the
worker alive for /ready."""

from __future__ import annotations

import gc
import logging
import os
import threading
from importlib import import_module
from typing import Any

from celery import Celery, bootsteps

from balancer_project import broker

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "balancer_project.settings.local")
broker.install()

logger = logging.getLogger(__name__)

app = Celery("balancer", amqp="balancer_project.broker:AMQP")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


class ServedQueues(bootsteps.StartStopStep):
    """Consume the queue of every served model, and report the worker alive for /ready.

    What the app wants of a worker comes from the module BALANCER_WORKER_BOOT names (its
    `queues()`, `started(concurrency=)` and `heartbeat(hostname=, beat=)`): the project's
    package imports no app code. At start the step consumes every queue it lists once (a model
    that is disabled while requests wait for it stays listed until they have ended); models
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
        from django.conf import settings

        boot = import_module(settings.BALANCER_WORKER_BOOT)
        try:
            wanted = boot.queues()
        except Exception:  # The database may be briefly unavailable: beat's tend announces them.
            logger.exception("could not read the model registry")
            wanted = set()
        concurrency = parent.controller.concurrency if parent.controller is not None else 0
        boot.started(concurrency=int(concurrency or 0))
        consuming = {q.name for q in parent.task_consumer.queues} if parent.task_consumer else set()
        for name in sorted(wanted - consuming):
            logger.info("consuming queue %s", name)
            parent.add_task_queue(name)
        # What is loaded by now lives as long as the worker; keep it out of the collector's
        # full passes (see balancer_project/asgi.py).
        gc.freeze()
        if self.thread is None or not self.thread.is_alive():
            self.stopping.clear()
            self.thread = threading.Thread(
                target=self.heartbeat, args=(parent.hostname, boot), name="balancer-heartbeat", daemon=True
            )
            self.thread.start()

    def stop(self, parent: Any) -> None:
        self.stopping.set()

    def heartbeat(self, hostname: str, boot: Any) -> None:
        from django.conf import settings

        beat = 0
        while not self.stopping.is_set():
            try:
                boot.heartbeat(hostname=hostname, beat=beat)
            except Exception:  # Redis away: /ready says so; try again next beat.
                logger.warning("could not write the worker heartbeat", exc_info=True)
            beat += 1
            self.stopping.wait(settings.BALANCER_WORKER_REFRESH_SECONDS)


app.steps["consumer"].add(ServedQueues)
