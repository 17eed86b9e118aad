"""Beat may die, and there may be several: the periodic care runs once per period for the
cluster (completions.periodic), against the live stack with extra beat processes."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from balancer_project.redis_conn import get_redis
from completions.periodic import RUNS_KEY
from tests.live import Beat, wait_until

pytestmark = pytest.mark.timeout(120)

TEND_SECONDS = 0.5  # the test settings' schedule


def _runs() -> int:
    return int(get_redis().hget(RUNS_KEY, "tend") or 0)  # type: ignore[arg-type]


def _now() -> float:
    seconds, micros = get_redis().time()
    return float(seconds) + float(micros) / 1e6


def test_three_beats_run_the_tend_once_per_period_and_one_killed_changes_nothing(
    stack_env: dict[str, str], run_dir: Path, worker: Any
) -> None:
    extra = [Beat(stack_env, run_dir / "logs"), Beat(stack_env, run_dir / "logs")]
    try:
        for beat in extra:
            beat.start()
        wait_until(lambda: all(b.running for b in extra), 10, "the beats to run")
        # Three beats send every tick; the tend runs at most once per window of its period.
        before, started = _runs(), _now()
        wait_until(lambda: _runs() >= before + 8, 30, "eight runs of the tend")
        runs, windows = _runs() - before, (_now() - started) / TEND_SECONDS
        assert runs <= windows + 2, (runs, windows)
        # One of them killed: the others go on sending, and the care goes on.
        extra[0].stop(sig=signal.SIGKILL)
        after = _runs()
        wait_until(lambda: _runs() >= after + 4, 30, "the tend to go on")
    finally:
        for beat in extra:
            beat.stop()
