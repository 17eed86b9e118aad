"""A worker's threads among models (completions.shares): each model up to its share, and all the
models with many calls in flight together up to all but the reserve, so a model that is neither
slow nor flooded always finds a thread. (Measured live: `python -m tests.bench isolation`.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from completions import shares as shares_module
from completions.shares import ModelShares


@pytest.fixture
def threads(settings: Any) -> Iterator[Callable[[int], None]]:
    def configure(n: int) -> None:
        shares_module.configure(threads=n)

    yield configure
    shares_module.configure(threads=0)


def fill(shares: ModelShares, model: str) -> list[Callable[[], None]]:
    """Every thread `model` can take now."""
    taken = []
    while (give := shares.take_or_park(model, None)) is not None:
        taken.append(give)
    return taken


@pytest.mark.parametrize("slow", [2, 3, 4])
def test_slow_models_together_leave_the_reserve_to_the_others(threads: Any, settings: Any, slow: int) -> None:
    settings.BALANCER_WORKER_MODEL_SHARE, settings.BALANCER_WORKER_RESERVED_SHARE = 0.5, 0.2
    threads(100)  # a pool of 80 for models with many calls in flight; "many" is 5
    shares = ModelShares()
    held = {f"slow-{n}": fill(shares, f"slow-{n}") for n in range(slow)}
    assert all(len(h) <= 50 for h in held.values())  # each within its share
    # Together they fill the pool; a slow model beyond those that fit it takes "few" (5) of the
    # reserve before it counts as many.
    assert sum(len(h) for h in held.values()) == 80 + 5 * (slow - 2)
    # Another model finds threads all the same: up to 5 at once while the reserve lasts.
    quick = fill(shares, "quick")
    assert len(quick) == min(5, 20 - 5 * (slow - 2))
    # A slow model's call ends while the others hold the reserve: it may not start another (the
    # many hold the pool still); the quick model's thread, given back, is the quick model's again.
    held["slow-0"].pop()()
    assert shares.take_or_park("slow-0", None) is None
    if quick:
        quick.pop()()
        assert shares.take_or_park("quick", None) is not None


def test_with_one_slow_model_the_others_are_bound_only_by_the_pool(threads: Any, settings: Any) -> None:
    settings.BALANCER_WORKER_MODEL_SHARE, settings.BALANCER_WORKER_RESERVED_SHARE = 0.5, 0.2
    threads(100)
    shares = ModelShares()
    assert len(fill(shares, "slow")) == 50
    assert len(fill(shares, "busy")) == 30  # to the pool's end (80), then it counts as many
    assert len(fill(shares, "quick")) == 5


def test_without_the_reserve_two_slow_models_take_every_thread(threads: Any, settings: Any) -> None:
    settings.BALANCER_WORKER_MODEL_SHARE, settings.BALANCER_WORKER_RESERVED_SHARE = 0.5, 0
    threads(100)
    shares = ModelShares()
    assert len(fill(shares, "slow-a")) + len(fill(shares, "slow-b")) == 100


def test_every_thread_given_back_is_counted_once(threads: Any, settings: Any) -> None:
    settings.BALANCER_WORKER_MODEL_SHARE, settings.BALANCER_WORKER_RESERVED_SHARE = 0.5, 0.2
    threads(10)  # 8 for the many, "few" is 1 (a model with none in flight)
    shares = ModelShares()
    a, b = fill(shares, "a"), fill(shares, "b")
    assert (len(a), len(b)) == (5, 3)
    for give in a:
        give()
        give()  # twice: still one thread back
    assert len(fill(shares, "b")) == 2  # b up to its own share now (5), not past it
    assert len(fill(shares, "c")) == 3  # the rest; c counts as "many" at 1, so it stops at the pool's end
