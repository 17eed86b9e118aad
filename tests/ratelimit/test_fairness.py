"""Scheduling in a line (the Lua scripts through ratelimit.limiter, real Redis): priority classes
with aging, and weighted fair queuing between flows (client keys) on a fair line."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest

from ratelimit import limiter
from ratelimit.limiter import Retry

LEASE = 30.0
COOLDOWN = {"cool": 10, "cool_max": 40, "fails": 2}


@pytest.fixture
def line() -> Iterator[str]:
    name = f"group:{uuid.uuid4().hex[:8]}"
    yield name
    limiter.reset(name)


def group(line: str, scheduling: str = "fifo", aging: float = 30.0) -> None:
    limiter.configure_group(
        line,
        deployments={"a": None},
        policy="capacity",
        cooldown=COOLDOWN,
        scheduling=scheduling,
        aging=aging,
    )


def enqueue(
    line: str, rid: str, *, flow: str = "k1", weight: float = 1, priority: int = 1, tokens: int = 100
) -> None:
    limiter.enqueue(
        line,
        rid,
        input_tokens=tokens // 2,
        output_tokens=tokens - tokens // 2,
        ticket=time.time_ns() // 1000,
        flow=flow,
        weight=weight,
        priority=priority,
    )


def grant_order(line: str, n: int) -> list[str]:
    out = []
    for _ in range(n):
        grant = limiter.acquire(line, None, lease_seconds=LEASE)
        assert grant.outcome == "go"
        out.append(grant.request_id)
    return out


def test_a_higher_class_goes_first_and_each_class_in_arrival_order(line: str) -> None:
    group(line)
    enqueue(line, "b1", priority=2)
    enqueue(line, "d1")
    enqueue(line, "i1", priority=0)
    enqueue(line, "d2")
    enqueue(line, "i2", priority=0)
    assert grant_order(line, 5) == ["i1", "i2", "d1", "d2", "b1"]


def test_the_first_of_a_lower_class_moves_up_after_the_aging_time(line: str) -> None:
    group(line, aging=0.2)
    enqueue(line, "b1", priority=2)
    enqueue(line, "d1")
    enqueue(line, "d2")
    assert grant_order(line, 1) == ["d1"]  # b1 is first of its class from now on
    time.sleep(0.25)
    assert grant_order(line, 2) == ["b1", "d2"]  # default class now, and older than d2
    # Under a flood of a higher class, a lower one is still served once per aging time.
    enqueue(line, "d3")
    for i in range(6):
        enqueue(line, f"i{i}", priority=0)
    assert grant_order(line, 1) == ["i0"]
    time.sleep(0.25)
    assert grant_order(line, 2) == ["d3", "i1"]


def test_a_backlog_does_not_climb_over_later_requests_of_its_own_class(line: str) -> None:
    group(line, scheduling="fair", aging=0.1)
    for i in range(10):
        enqueue(line, f"a{i}", flow="a")
    grant_order(line, 1)
    time.sleep(0.15)
    enqueue(line, "b0", flow="b")  # a newcomer in the same class: its fair place, not behind a's backlog
    assert grant_order(line, 3)[:2] in (["a1", "b0"], ["b0", "a1"])


def test_a_fair_line_shares_by_weight_and_keeps_each_flow_in_order(line: str) -> None:
    group(line, scheduling="fair")
    for i in range(40):
        enqueue(line, f"a{i:02d}", flow="a", weight=1)
    for i in range(40):
        enqueue(line, f"b{i:02d}", flow="b", weight=3)
    order = grant_order(line, 40)  # both backlogged all along
    shares = Counter(rid[0] for rid in order)
    assert (shares["a"], shares["b"]) == (10, 30)
    for flow in "ab":
        mine = [rid for rid in order if rid[0] == flow]
        assert mine == sorted(mine)  # FIFO within a flow


def test_fair_shares_count_tokens_not_requests(line: str) -> None:
    group(line, scheduling="fair")
    for i in range(30):
        enqueue(line, f"a{i:02d}", flow="a", tokens=300)  # three times the tokens each
        enqueue(line, f"b{i:02d}", flow="b", tokens=100)
    order = grant_order(line, 20)
    shares = Counter(rid[0] for rid in order)
    assert (shares["a"], shares["b"]) == (5, 15)


def test_a_flow_that_was_idle_comes_back_without_a_pile_of_credit(line: str) -> None:
    group(line, scheduling="fair")
    for i in range(20):
        enqueue(line, f"a{i:02d}", flow="a")
    grant_order(line, 10)  # b idle meanwhile
    for i in range(10):
        enqueue(line, f"b{i:02d}", flow="b")
    order = grant_order(line, 10)
    assert Counter(rid[0] for rid in order) == {"a": 5, "b": 5}  # alternating, not b ten times


def test_a_retried_request_keeps_its_place_in_its_flow_and_class(line: str) -> None:
    group(line, scheduling="fair")
    enqueue(line, "a1", flow="a", priority=0)
    enqueue(line, "a2", flow="a", priority=0)
    enqueue(line, "b1", flow="b")
    assert grant_order(line, 1) == ["a1"]
    limiter.settle(line, "a1", mode="refund", retry=Retry(0.0))
    assert grant_order(line, 3) == ["a1", "a2", "b1"]


def test_status_shows_each_flows_waiting_share_and_wait(line: str) -> None:
    group(line, scheduling="fair")
    for i in range(4):
        enqueue(line, f"a{i}", flow="a", weight=1)
        enqueue(line, f"b{i}", flow="b", weight=3)
    grant_order(line, 4)
    flows = {f.flow: f for f in limiter.status(line, input_tokens=0, output_tokens=0).flows}
    assert (flows["a"].waiting, flows["b"].waiting) == (3, 1)
    assert flows["a"].share == pytest.approx(0.25) and flows["b"].share == pytest.approx(0.75)
    assert flows["a"].granted == 1 and flows["b"].granted == 3
