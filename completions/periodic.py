"""The cluster's periodic care runs once per period, however many beat processes schedule it.

Operators run beat like any other process: one, two for safety, or, for a while, none. With none,
nothing a request needs waits on it (its wake-ups are countdown tasks, its line's deadlines are
the line's own: tests/completions/test_without_beat.py); the care — the outbox, lost leases,
provider batches, the sweep — resumes when a beat is back. With several, each would send every
tick: a periodic task first takes its period's key in Redis (`SET NX`, one key per task and
window of its period on Redis's clock, so every process and machine agrees), and a tick that
finds it taken does nothing. Each run is counted (`balancer:periodic:runs`) and its time kept
(`balancer:periodic:last`), for /metrics.
"""

from __future__ import annotations

import math

from balancer_project.redis_conn import get_redis

KEY_PREFIX = "balancer:periodic:window:"
RUNS_KEY = "balancer:periodic:runs"
LAST_KEY = "balancer:periodic:last"


def once_per_period(name: str, period: float) -> bool:
    """Whether this tick of periodic task `name` (scheduled every `period` seconds) is the first
    of its window: it runs; any other tick of the window, from any beat, does not."""
    r = get_redis()
    seconds, micros = r.time()
    now = float(seconds) + float(micros) / 1e6
    window = math.floor(now / period)
    if not r.set(f"{KEY_PREFIX}{name}:{window}", "1", nx=True, px=max(1000, int(2000 * period))):
        return False
    pipe = r.pipeline(transaction=False)
    pipe.hincrby(RUNS_KEY, name, 1)
    pipe.hset(LAST_KEY, name, f"{now:.3f}")
    pipe.execute()
    return True
