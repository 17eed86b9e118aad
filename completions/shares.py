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
- an unlimited model has no line: the request is parked here, in arrival order, and the next
  thread of that model to finish its call runs it at once, without a trip through the broker.
  Its task is also published again with a countdown (`PARK_SECONDS`): should this worker die,
  that copy runs it elsewhere; should it have run meanwhile, the copy finds it claimed and ends.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from collections.abc import Callable

from django.conf import settings

PARK_SECONDS = 15.0

_lock = threading.Lock()
_held: dict[str, int] = {}
_parked: dict[str, OrderedDict[str, None]] = {}
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


def take(model: str, *, park: str | None = None) -> Callable[[], None] | None:
    """A thread of `model`'s share: the function that gives it back (idempotent), or None when
    the model holds its share already — then `park` (a request id), if given, waits here for the
    next thread of the model that finishes (`take_parked`)."""
    cap = model_cap()
    with _lock:
        held = _held.get(model, 0)
        if cap and held >= cap:
            if park is not None:
                _parked.setdefault(model, OrderedDict())[park] = None
            return None
        if park is not None and model in _parked:  # its copy came back first: not parked any more
            _parked[model].pop(park, None)
        _held[model] = held + 1
    given = threading.Event()
    return functools.partial(_give, model, given)


def take_parked(model: str) -> tuple[str, Callable[[], None]] | None:
    """The oldest request parked for `model` with a thread of its share, or None (nothing parked,
    or no share free)."""
    cap = model_cap()
    with _lock:
        parked = _parked.get(model)
        if not parked or (cap and _held.get(model, 0) >= cap):
            return None
        request_id, _ = parked.popitem(last=False)
        _held[model] = _held.get(model, 0) + 1
    given = threading.Event()
    return request_id, functools.partial(_give, model, given)


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
