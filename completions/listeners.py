"""Which web processes still hold their clients' calls open.

A compatible call is held open by one web process until its answer is sent; its request records
that process's reply channel (`reply_to`, plain calls and streams alike). Each web process keeps
`balancer:listener:<channel>` alive while its listener runs (completions.waiting: set every
LISTENER_BEAT_SECONDS, expiring after LISTENER_TTL_SECONDS, deleted when it stops). A worker about
to call the upstream for such a request checks it first: a web process gone — killed, or cut off
from Redis for that long — has no client left to read the answer, so the request is cancelled
instead of paid for nobody. Right after Redis lost its data no listener has beaten yet: until a
TTL has passed since (the tend's epoch key), a missing key says nothing.
"""

from __future__ import annotations

import time

from balancer_project.redis_conn import get_redis
from completions.workers import EPOCH_KEY

LISTENER_PREFIX = "balancer:listener:"
LISTENER_TTL_SECONDS = 10
LISTENER_BEAT_SECONDS = 2.0


def listener_key(channel: str) -> str:
    return f"{LISTENER_PREFIX}{channel}"


def caller_gone(channel: str, *, waited: float) -> bool:
    """Whether the web process behind reply channel `channel` is gone (False when unsure), for a
    request that has waited `waited` seconds since that process took it: its key was alive then,
    so it cannot have expired before TTL - BEAT seconds — a request younger than that (nearly
    every one, when nothing waits in line) costs no Redis round trip."""
    if not channel or waited < LISTENER_TTL_SECONDS - LISTENER_BEAT_SECONDS:
        return False
    pipe = get_redis().pipeline(transaction=False)
    pipe.exists(listener_key(channel))
    pipe.get(EPOCH_KEY)
    alive, epoch = pipe.execute()
    if alive or epoch is None:
        return False
    return time.time() - float(epoch) > LISTENER_TTL_SECONDS
