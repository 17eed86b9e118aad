"""Who owns a running request: the attempt whose worker keeps renewing its lease.

Liveness is renewed, not assumed. A time measured from the start of a call says nothing about
whether its worker is alive (an SDK's timeout bounds each read, not a stream's length), so the
sweeper no longer re-runs a request for having run long; it re-runs one whose lease has ended.

- Every attempt has a fencing token, written into its row by the claim (rows.claim). Its row
  writes and its settlements carry the token and are refused once another attempt owns the
  request (rows.finish with `claim`, settle.lua).
- While the attempt's call runs, a thread of its worker process (`LeaseKeeper`) renews, every
  LEASE/4 seconds and in one pipeline for all the process's attempts, the attempt's lease
  (`balancer:{leases}:<id>:<token>`, expiring after BALANCER_LEASE_SECONDS: a key per attempt,
  so one attempt's lease never stands in the way of the next) and the lease of its slot in its
  line (renew.lua). It stops renewing an attempt that has made no progress (no
  chunk of a stream, no answer) for its provider's timeout plus BALANCER_LEASE_MARGIN_SECONDS: a
  call that is alive gets bytes within its provider's timeout, or fails.
- A call shorter than the first renewal never touches Redis for its lease at all: the check
  below treats a running row whose lease was never written like one whose lease ended, once
  the row is older than a lease.
- The tend (completions.maintenance) checks, every few seconds, the running rows claimed more
  than a lease ago: a lease missing at two checks LEASE/2 apart (Redis time) has ended — the
  worker died, hung, or lost Redis for that long. The request is taken from that attempt
  (a tombstone in its lease key, then the fenced row write) and runs again from
  its own place in line. The two looks keep a Redis outage or restart (every lease gone at
  once) from being read as every worker dead: the living renew within LEASE/4 of its return.
- A renewal that finds the tombstone tells its attempt it has lost the request: a stream stops
  relaying and aborts its upstream call.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from redis.exceptions import NoScriptError

from balancer_project.redis_conn import get_redis
from completions.scripts import lua_script
from ratelimit import limiter

logger = logging.getLogger(__name__)

LEASE_PREFIX = "balancer:{leases}:"
# Running requests whose lease was found missing, and when (Redis time): lost at a second look.
SUSPECTS_KEY = "balancer:{leases}:suspects"
# A tombstone outlives any renewal of the attempt it was taken from.
TOMBSTONE_SECONDS = 3600.0


def lease_key(request_id: str, token: str) -> str:
    return f"{LEASE_PREFIX}{request_id}:{token}"


def lease_seconds() -> float:
    return float(settings.BALANCER_LEASE_SECONDS)


def renew_every() -> float:
    """How often the living renew: four times per lease, so one late pass costs nothing."""
    return lease_seconds() / 4


def _script() -> Any:
    return lua_script("lease")


@dataclass(eq=False)
class Held:
    """One attempt running in this process: its request, fencing token, the line whose slot it
    holds (None: an unlimited model's) and the deployment of that line its grant named ("" on a
    line without deployments), and how long it may go without progress."""

    request_id: str
    token: str
    line: str | None
    deployment: str
    stall_seconds: float
    progressed_at: float = field(default_factory=time.monotonic)
    lost: bool = False

    def progress(self) -> None:
        """The call made progress (a chunk arrived)."""
        self.progressed_at = time.monotonic()

    @property
    def stalled(self) -> bool:
        return time.monotonic() - self.progressed_at > self.stall_seconds


class LeaseKeeper:
    """The attempts of this process and the thread that renews their leases (started with the
    first attempt a process holds: with any Celery pool, in the process that runs the calls)."""

    def __init__(self) -> None:
        self.held: dict[str, Held] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.pid = 0

    def hold(self, *, request_id: str, token: str, line: str | None, deployment: str, timeout: float) -> Held:
        held = Held(request_id, token, line, deployment, timeout + settings.BALANCER_LEASE_MARGIN_SECONDS)
        with self.lock:
            self.held[request_id] = held
            if self.thread is None or not self.thread.is_alive() or self.pid != os.getpid():
                self.pid = os.getpid()
                self.thread = threading.Thread(target=self._run, name="balancer-leases", daemon=True)
                self.thread.start()
        return held

    def release(self, held: Held) -> None:
        """The attempt is over (its lease key simply runs out: a finished row is never checked)."""
        with self.lock:
            if self.held.get(held.request_id) is held:
                del self.held[held.request_id]

    def _run(self) -> None:
        while True:
            time.sleep(renew_every())
            with self.lock:
                current = list(self.held.values())
            if not current:
                continue
            try:
                leases_renew(current)
            except Exception:  # Redis away: the leases run on; the next pass tries again
                logger.warning(
                    "could not renew the leases of %d running requests", len(current), exc_info=True
                )


keeper = LeaseKeeper()


def leases_renew(attempts: Iterable[Held]) -> None:
    """One pass: renew, in one round trip, the lease and the slot of every attempt still making
    progress; mark `lost` those that no longer own their request."""
    client = get_redis()
    pipe = client.pipeline(transaction=False)
    seconds = lease_seconds()
    pending: list[tuple[Held, int, Any]] = []
    script = _script()
    for held in attempts:
        if held.lost or held.stalled:
            continue
        index = len(pipe)
        pipe.evalsha(script.sha, 1, lease_key(held.request_id, held.token), "renew", f"{seconds:.3f}")
        slot = (
            limiter.renew_in(
                pipe,
                held.line,
                held.request_id,
                token=held.token,
                lease_seconds=seconds,
                deployment=held.deployment,
            )
            if held.line
            else None
        )
        pending.append((held, index, slot))
    if not pending:
        return
    replies = pipe.execute(raise_on_error=False)
    if any(isinstance(replies[index], NoScriptError) for _, index, _ in pending):
        client.script_load(script.script)  # Redis restarted: loaded for the next pass, due soon
        return
    for held, index, slot in pending:
        reply = replies[index]
        if isinstance(reply, Exception):
            logger.warning("request %s: could not renew its lease: %s", held.request_id, reply)
            continue
        lost = list(reply)[0] == 0
        if slot is not None:
            try:
                lost = lost or not slot.result(replies)
            except Exception:
                logger.warning("request %s: could not renew its slot", held.request_id, exc_info=True)
        if lost and not held.lost:
            held.lost = True
            logger.warning("request %s: its attempt lost its lease; it is being run again", held.request_id)


def lease_lose(*, request_id: str, token: str) -> None:
    """Take the request from the attempt of `token` (its lease ended): a tombstone its late
    renewals find."""
    _script()(keys=[lease_key(request_id, token)], args=["lose", f"{TOMBSTONE_SECONDS:.3f}"])


def leases_ended(running: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Of `running` (request id, token: rows running since more than a lease ago), those whose
    lease has ended: missing now and at an earlier look at least LEASE/2 ago (Redis time)."""
    if not running:
        return []
    client = get_redis()
    seconds, micros = client.time()
    now = seconds + micros / 1e6
    found = client.mget([lease_key(rid, token) for rid, token in running])
    missing = [(rid, token) for (rid, token), value in zip(running, found, strict=True) if value is None]
    pipe = client.pipeline(transaction=False)
    present = [rid for (rid, _), value in zip(running, found, strict=True) if value is not None]
    if present:
        pipe.hdel(SUSPECTS_KEY, *present)
    for rid, _ in missing:
        pipe.hsetnx(SUSPECTS_KEY, rid, f"{now:.3f}")
    pipe.execute()
    if not missing:
        return []
    first_seen = client.hmget(SUSPECTS_KEY, [rid for rid, _ in missing])
    ended = [
        (rid, token)
        for (rid, token), seen in zip(missing, first_seen, strict=True)
        if seen is not None and now - float(seen) >= lease_seconds() / 2
    ]
    return ended


def suspects_forget(request_ids: list[str]) -> None:
    """Forget what the checks noted of requests that are no longer running."""
    if request_ids:
        get_redis().hdel(SUSPECTS_KEY, *request_ids)


def suspects_known() -> list[str]:
    found: list[str] = get_redis().hkeys(SUSPECTS_KEY)  # type: ignore[assignment]  # decoded replies
    return found
