"""Which web processes still hold their clients' calls open.

A compatible call is held open by one web process until its answer is sent; its request records
that process's reply channel (`reply_to`, plain calls and streams alike). Each web process keeps
`balancer:listener:<channel>` alive while its listener runs (completions.waiting: set every
LISTENER_BEAT_SECONDS, expiring after LISTENER_TTL_SECONDS, deleted when it stops). A worker about
to call the upstream for such a request checks it first: a web process gone has no client left to
read the answer, so the request is cancelled instead of paid for nobody.

Gone is either of two signs (lua/caller.lua, one step): its key expired (the process was cut off
from Redis, or stopped, for a TTL), or its reply channel has had no subscriber for
LOST_GRACE_SECONDS. The second is what a SIGKILL shows within moments: Redis drops a subscription
as soon as its connection closes, while the key outlives the process by up to its TTL (at 10
grants a second, 93 of 200 calls were paid for nobody in that time). A live listener that lost
its connection subscribes again within its backoff (LISTENER_RECONNECT_MAX_SECONDS) and clears
the channel's lost mark with its next beat; the grace covers that, and a worker that finds a
subscription missing for less than the grace asks again when it has passed. Right after Redis
lost its data no listener has beaten yet: until a TTL has passed since (the tend's epoch key), a
missing key says nothing.
"""

from __future__ import annotations

import time
from typing import Any

from completions.scripts import lua_script
from completions.workers import EPOCH_KEY

LISTENER_PREFIX = "balancer:listener:"
LOST_PREFIX = "balancer:listener-lost:"
LISTENER_TTL_SECONDS = 10
LISTENER_BEAT_SECONDS = 2.0
LOST_GRACE_SECONDS = 2.0
# A listener that lost Redis tries again at most this long after its last try: well within the grace.
LISTENER_RECONNECT_MAX_SECONDS = 1.0
# A request claimed this soon after its web process took it is not checked: that process was
# alive a moment ago, and the check would cost every unqueued call a round trip.
CHECK_AFTER_SECONDS = 1.0


def listener_key(channel: str) -> str:
    return f"{LISTENER_PREFIX}{channel}"


def lost_key(channel: str) -> str:
    """When a worker first found `channel` without its subscriber (cleared by the listener's beat)."""
    return f"{LOST_PREFIX}{channel}"


def _script() -> Any:
    return lua_script("caller")


def caller_gone(channel: str, *, waited: float) -> bool:
    """Whether the web process behind reply channel `channel` is gone (False when unsure), for a
    request that has waited `waited` seconds since that process took it (under
    CHECK_AFTER_SECONDS — nearly every request, when nothing waits in line — costs no round trip)."""
    if not channel or waited < CHECK_AFTER_SECONDS:
        return False
    keys = [listener_key(channel), lost_key(channel), EPOCH_KEY]

    def ask() -> tuple[int, int]:
        gone, again_ms = _script()(
            keys=keys, args=[channel, time.time(), LISTENER_TTL_SECONDS, LOST_GRACE_SECONDS]
        )
        return int(gone), int(again_ms)

    gone, again_ms = ask()
    if again_ms:
        # Its subscription went missing a moment ago: a killed process, or a live one between
        # connections. This thread waits out the rest of the grace, once; calls checked after it
        # find the mark old enough and need not wait.
        time.sleep(again_ms / 1000)
        gone, _ = ask()
    return bool(gone)
