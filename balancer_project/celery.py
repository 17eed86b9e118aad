"""The Celery app, plus one worker bootstep that consumes every model's queue and reports the
worker alive for /ready."""

from __future__ import annotations

import gc
import logging
import os
import threading
import uuid
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
            # From the consumer's loop, once it takes messages: on RabbitMQ, a queue's consume
            # waits for the broker's answer, and a message of a queue consumed already that
            # arrives meanwhile would find no handler yet (kombu: "Consumer does not have any
            # callbacks", and the worker exits).
            parent.call_soon(parent.add_task_queue, name, **consume_options())
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


# -- RabbitMQ as the broker (CELERY_BROKER_URL=amqp://…), beside the Redis default -------------


def on_rabbitmq() -> bool:
    return str(app.conf.broker_url or "").startswith(("amqp://", "amqps://", "pyamqp://"))


_delayed_ready: set[str] = set()
_delayed_lock = threading.Lock()


def _delayed_delivery_ready(queue: str) -> None:
    """RabbitMQ delays a message for a quorum queue through Celery's delayed-delivery exchanges
    (a chain of queues whose messages expire into the next), which reach a queue only once it is
    bound to them. A worker declares them and binds the queues it knows when it starts, not those
    of models added since: the first delayed publish to a queue in each process does both."""
    if queue in _delayed_ready:
        return
    from kombu.transport.native_delayed_delivery import (
        bind_queue_to_native_delayed_delivery_exchange,
        declare_native_delayed_delivery_exchanges_and_queues,
    )

    with _delayed_lock, app.connection_for_write() as conn:
        if not _delayed_ready:
            declare_native_delayed_delivery_exchanges_and_queues(conn, "quorum")
        target = app.amqp.queues[queue]  # created as the missing queues are: quorum, topic
        target(conn.default_channel).declare()
        bind_queue_to_native_delayed_delivery_exchange(conn, target)
        _delayed_ready.add(queue)


def consume_options() -> dict[str, Any]:
    """How a worker told to consume a queue declares it: as publishing to it does. On RabbitMQ a
    quorum queue on a topic exchange; Celery's own add_consumer would declare a classic queue on
    a direct exchange, which the broker then refuses to declare again as a quorum one."""
    if not on_rabbitmq():
        return {}
    return {"exchange_type": "topic", "queue_arguments": {"x-queue-type": "quorum"}}


def publish(name: str, *, queue: str, countdown: float | None = None, **options: Any) -> None:
    """Send task `name` to `queue`, `countdown` seconds from now. On RabbitMQ, Celery delays the
    whole seconds of it in the broker (delayed delivery) and the worker that receives it holds the
    rest, to its exact time (the message's ETA). Under a second, the message goes straight to its
    queue with its ETA (Celery would round it down to no delay, which kombu refuses)."""
    if countdown and countdown > 0 and on_rabbitmq():
        if countdown < 1:
            message = app.amqp.create_task_message(str(uuid.uuid4()), name, countdown=countdown, **options)
            with app.producer_or_acquire() as producer:
                app.amqp.send_task_message(producer, name, message, queue=app.amqp.queues[queue])
            return
        _delayed_delivery_ready(queue)
    app.send_task(name, queue=queue, countdown=countdown, **options)


def queue_depths(queues: list[str]) -> dict[str, int]:
    """Messages waiting in each Celery queue (not those a worker holds unacknowledged)."""
    if not on_rabbitmq():  # Redis keeps a queue as a list of its name
        from balancer_project.redis_conn import get_redis

        pipe = get_redis().pipeline(transaction=False)
        for q in queues:
            pipe.llen(q)
        return dict(zip(queues, (int(n) for n in pipe.execute()), strict=True))
    depths: dict[str, int] = {}
    with app.connection_for_read() as conn:
        channel = conn.channel()
        for q in queues:
            try:
                depths[q] = int(channel.queue_declare(queue=q, passive=True).message_count)
            except conn.channel_errors:  # not declared yet: empty (the broker closed the channel)
                depths[q] = 0
                channel = conn.channel()
        channel.close()
    return depths
