"""Completion events over Redis pub/sub: workers announce that a request reached a terminal state;
web processes wake the clients waiting for it (see completions.waiting)."""

from __future__ import annotations

import json
import logging

from balancer_project.redis_conn import get_redis

logger = logging.getLogger(__name__)

CHANNEL = "balancer:completions:done"


def completion_event_publish(*, request_id: str, status: str) -> None:
    """Announce a terminal state. Called after the row is committed, so a woken waiter that reads
    the row sees it. A lost event costs a waiter only its wait: it re-reads the row at its
    deadline, and on every reconnect of the listener."""
    try:
        get_redis().publish(CHANNEL, json.dumps({"id": request_id, "status": status}))
    except Exception:
        logger.warning("could not publish completion event for %s", request_id, exc_info=True)
