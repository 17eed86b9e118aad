"""Completion events over Redis pub/sub: workers announce that a request reached a terminal state;
web processes wake the clients waiting for it (see completions.waiting). The web process a
request came through also gets its result on its own reply channel, so it answers without
reading the row."""

from __future__ import annotations

import json
import logging
from typing import Any

from balancer_project.redis_conn import get_redis

logger = logging.getLogger(__name__)

CHANNEL = "balancer:completions:done"
REPLY_PREFIX = "balancer:completions:reply:"
# A reply larger than this is not published: its waiter reads it from the row. Redis queues
# what it publishes in each subscriber's output buffer and closes a subscriber past 8 MB for
# 60 s or 32 MB at once (client-output-buffer-limit pubsub): one 31-MB reply closed a web
# process's subscription and delayed every other waiter of that process.
REPLY_INLINE_BYTES = 64 * 1024


def completion_event_publish(
    *,
    request_id: str,
    status: str,
    reply_to: str = "",
    result: dict[str, Any] | None = None,
    body: str | None = None,
    pipe: Any = None,
) -> None:
    """Announce a terminal state, and send `result` to the request's reply channel: one JSON
    line, then (when given) `body`, the response already encoded as JSON, as it is — unless the
    body is longer than REPLY_INLINE_BYTES: then only the announcement goes out, and the waiter,
    woken by it, reads the row. Called after
    the row is committed, so a woken waiter that reads the row sees it. With `pipe` the messages
    join that pipeline (the caller executes it). A lost event costs a waiter only its wait: it
    re-reads the row at its deadline, and on every reconnect of the listener."""
    try:
        target = pipe if pipe is not None else get_redis().pipeline(transaction=False)
        inline = body is None or len(body) <= REPLY_INLINE_BYTES
        if reply_to.startswith(REPLY_PREFIX) and result is not None and inline:
            message = json.dumps({"id": request_id, "status": status, **result})
            target.publish(reply_to, message if body is None else f"{message}\n{body}")
        target.publish(CHANNEL, json.dumps({"id": request_id, "status": status}))
        if pipe is None:
            target.execute()
    except Exception:
        logger.warning("could not publish completion event for %s", request_id, exc_info=True)
