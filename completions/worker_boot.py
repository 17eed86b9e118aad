"""What a worker process does for the app when it starts, and on its heartbeat (called by the
project's worker bootstep, balancer_project.celery, which names this module in
BALANCER_WORKER_BOOT)."""

from __future__ import annotations

import logging

from django.db import connection

from completions import shares
from completions.providers import provider_for
from completions.selectors import provider_configs_all, served_queue_names
from completions.tokens import warm_up
from completions.workers import worker_heartbeat

logger = logging.getLogger(__name__)


def queues() -> set[str]:
    """Every queue the worker consumes: each served model's and group's, and those of models
    that drain (a model added later reaches running workers through beat's tend)."""
    return served_queue_names()


def started(*, concurrency: int) -> None:
    """The worker is about to take tasks: its thread count bounds each model's share, and each
    provider's SDK client is built now (TLS context, connection pool: tens of ms) so the first
    request after a grant does not pay for it on its way upstream."""
    if concurrency:
        shares.configure(threads=concurrency)
    try:
        for config in provider_configs_all():
            provider_for(config)
        warm_up()
    except Exception:
        logger.exception("could not prepare the provider clients")


def heartbeat(*, hostname: str, beat: int) -> None:
    """Report the worker alive (/ready), and every fifth beat which providers' keys it can read
    (names only: /v1/models says which models can be called)."""
    credentialed = missing = None
    if beat % 5 == 0:
        try:
            configs = provider_configs_all()
            credentialed = [c.name for c in configs if c.api_key or c.kind == "mock"]
            missing = [c.name for c in configs if not (c.api_key or c.kind == "mock")]
        except Exception:
            logger.warning("could not read the providers for the credentials report", exc_info=True)
        finally:
            connection.close()  # this thread's own connection, not a pooled one
    worker_heartbeat(hostname=hostname, credentialed=credentialed, missing=missing)
