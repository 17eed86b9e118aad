"""Each model's share of a worker process's threads.

A worker's threads serve every model. Without a bound, one model whose upstream is slow (or
simply flooded with requests) ends up holding every thread, and a request for another model
waits in the broker until one of those calls ends: 260 calls of 30 s delayed an unrelated
request by 13 s. So one model may hold at most BALANCER_WORKER_MODEL_SHARE of a worker's
threads in upstream calls; the others stay free for the other models.

A task that finds its model at its share does not wait for a thread (that would hold one):
- a limited model's request stays where it is, in its line: the settlement of the next call of
  that model to end wakes the line again (and beat's tend re-wakes every line), so it keeps its
  place;
- an unlimited model has no line: its task comes back after a short countdown, growing with each
  return (`bounce_countdown`). It may fall behind later arrivals of the same model meanwhile —
  unlimited models promise no order.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable

from django.conf import settings

_lock = threading.Lock()
_held: dict[str, int] = {}
_threads = 0  # the worker's concurrency, once it is known (0: no bound, e.g. outside a worker)


def configure(*, threads: int) -> None:
    """The worker's thread count (its Celery concurrency), given when the worker starts."""
    global _threads
    _threads = threads


def model_cap() -> int:
    """How many threads one model may hold in this process (0: unbounded)."""
    share = float(settings.BALANCER_WORKER_MODEL_SHARE)
    if _threads <= 0 or share >= 1:
        return 0
    return max(1, math.floor(_threads * share))


def take(model: str) -> Callable[[], None] | None:
    """A thread of `model`'s share: the function that gives it back (idempotent), or None when
    the model holds its share already."""
    cap = model_cap()
    with _lock:
        held = _held.get(model, 0)
        if cap and held >= cap:
            return None
        _held[model] = held + 1
    given = threading.Event()
    return functools.partial(_give, model, given)


def _give(model: str, given: threading.Event) -> None:
    with _lock:
        if given.is_set():
            return
        given.set()
        left = _held.get(model, 1) - 1
        if left > 0:
            _held[model] = left
        else:
            _held.pop(model, None)


def bounce_countdown(bounces: int) -> float:
    """Seconds before an unlimited model's task that found its share full comes back: 0.25 s,
    doubling with each return, at most 4 s (so a backlog costs a few publishes a second, not a
    spin)."""
    return float(min(0.25 * 2**bounces, 4.0))
