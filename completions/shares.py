"""Each model's share of a worker process's threads.

A worker's threads serve every model. Without a bound, one model whose upstream is slow (or
simply flooded with requests) ends up holding every thread, and a request for another model
waits in the broker until one of those calls ends: 260 calls of 30 s delayed an unrelated
request by 13 s. So one model may hold at most BALANCER_WORKER_MODEL_SHARE of a worker's
threads in upstream calls; the others stay free for the other models.

Shares alone do not add up: two slow models at half each took every thread, and a third
model's request waited 23.4 s. So a reserve is kept too: BALANCER_WORKER_RESERVED_SHARE of the
threads (a fifth) is only for models with few calls in flight (fewer than a quarter of the
reserve). However many models are slow or flooded at once, they hold the rest together, and a
model that is neither finds a thread (`python -m tests.bench isolation` measures both bounds).

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

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable

from django.conf import settings

from completions.slots import Slots

PARK_SECONDS = 15.0

_threads = 0  # the worker's concurrency, once it is known (0: no bound, e.g. outside a worker)


def configure(*, threads: int) -> None:
    """The worker's thread count (its Celery concurrency), given when the worker starts."""
    global _threads
    _threads = threads


def model_cap() -> int | None:
    """How many threads one model may hold in this process (None: no bound)."""
    share = float(settings.BALANCER_WORKER_MODEL_SHARE)
    if _threads <= 0 or share >= 1:
        return None
    return max(1, math.floor(_threads * share))


def reserve() -> tuple[int, int] | None:
    """The threads models with many calls in flight may hold together, and how many calls "many"
    is (None: no reserve). With 100 threads: 80, and 5."""
    reserved = math.ceil(_threads * float(settings.BALANCER_WORKER_RESERVED_SHARE))
    if _threads <= 1 or reserved <= 0:
        return None
    reserved = min(reserved, _threads - 1)
    return _threads - reserved, max(1, reserved // 4)


class ModelShares(Slots):
    """The threads each model holds, and the requests parked for each (changed under one lock,
    so a request is never parked after the last thread of its model has looked)."""

    def __init__(self) -> None:
        super().__init__()
        self._parked: dict[str, OrderedDict[str, None]] = {}

    def full_locked(self, key: Hashable, cap: int | None) -> bool:
        """At its own share, or one of the models with many calls in flight while those hold all
        but the reserve."""
        if super().full_locked(key, cap):
            return True
        bound = reserve()
        if bound is None:
            return False
        pool, many = bound
        # The sum only for a model with many in flight (a few hundred models at most).
        return self._held.get(key, 0) >= many and sum(self._held.values()) >= pool

    def take_or_park(self, model: str, park: str | None) -> Callable[[], None] | None:
        """A thread of `model`'s share: the function that gives it back, or None when the model
        holds its share already — then `park` (a request id), if given, waits here for the next
        thread of the model that finishes (`take_parked`)."""
        cap = model_cap()
        with self.lock:
            release = self.take_locked(model, cap)
            if park is not None:
                if release is None:
                    self._parked.setdefault(model, OrderedDict())[park] = None
                elif model in self._parked:  # its copy came back first: not parked any more
                    self._parked[model].pop(park, None)
            return release

    def take_parked(self, model: str) -> tuple[str, Callable[[], None]] | None:
        """The oldest request parked for `model` with a thread of its share, or None (nothing
        parked, or no share free)."""
        cap = model_cap()
        with self.lock:
            parked = self._parked.get(model)
            if not parked or self.full_locked(model, cap):
                return None
            request_id, _ = parked.popitem(last=False)
            release = self.take_locked(model, cap)
            assert release is not None  # not full, checked under the same lock
            return request_id, release


shares = ModelShares()
