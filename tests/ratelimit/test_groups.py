"""A model group's line in the Lua scripts: one line, several deployments each with its own
buckets, the head going to one that can take it now, cooldowns after failures. Called through
ratelimit.limiter against the real Redis of the test run."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from ratelimit import limiter
from ratelimit.limiter import Health, Retry, Throttled

LEASE = 30.0
COOLDOWN = {"cool": 10, "cool_max": 40, "fails": 2}


@pytest.fixture
def line() -> Iterator[str]:
    name = f"group:{uuid.uuid4().hex[:8]}"
    yield name
    limiter.reset(name)


def group(line: str, policy: str = "capacity", **deployments: dict[str, float] | None) -> None:
    limiter.configure_group(line, deployments=deployments, policy=policy, cooldown=COOLDOWN)


def enqueue(line: str, rid: str, deployments: list[str] | None = None) -> None:
    limiter.enqueue(line, rid, input_tokens=10, output_tokens=10, deployments=deployments)


def go(line: str) -> limiter.Grant:
    return limiter.acquire(line, None, lease_seconds=LEASE)


def test_the_group_takes_the_sum_of_its_deployments_and_never_more_than_each(line: str) -> None:
    # Two deployments of 2 requests each (60 per minute, a burst of 2 seconds): four go at once,
    # the fifth waits for the first refill (one second), not for one deployment's.
    group(line, a={"rpm": 60, "burst": 2}, b={"rpm": 60, "burst": 2})
    for i in range(5):
        enqueue(line, f"r{i}")
    grants = [go(line) for _ in range(4)]
    assert [g.outcome for g in grants] == ["go"] * 4
    assert [g.request_id for g in grants] == ["r0", "r1", "r2", "r3"]  # strict order across the group
    assert sorted(g.deployment for g in grants) == ["a", "a", "b", "b"]
    fifth = go(line)
    assert fifth.outcome == "wait" and 0.45 <= float(fifth.wake.countdown if fifth.wake else 0.5) <= 1.0
    status = limiter.status(line, input_tokens=0, output_tokens=0)
    assert {d.id: d.in_flight for d in status.deployments} == {"a": 2, "b": 2}
    assert status.in_flight == 4 and status.waiting == 1


def test_capacity_policy_spreads_by_remaining_share_times_weight(line: str) -> None:
    group(line, a={"rpm": 600, "burst": 1, "weight": 1}, b={"rpm": 600, "burst": 1, "weight": 3})
    for i in range(8):
        enqueue(line, f"r{i}")
    picked = [go(line).deployment for _ in range(8)]
    # b (three times the weight) is preferred until its share left is a third of a's.
    assert picked.count("b") > picked.count("a") > 0


def test_round_robin_alternates(line: str) -> None:
    group(line, policy="round_robin", a=None, b=None)
    for i in range(6):
        enqueue(line, f"r{i}")
    assert [go(line).deployment for _ in range(6)] == ["a", "b", "a", "b", "a", "b"]


def test_latency_policy_prefers_the_faster_deployment(line: str) -> None:
    group(line, policy="latency", a=None, b=None)
    for i in range(4):
        enqueue(line, f"r{i}")
    first, second = go(line), go(line)
    limiter.settle(line, first.request_id, mode="usage", health=Health("ok", latency=2.0))
    limiter.settle(line, second.request_id, mode="usage", health=Health("ok", latency=0.1))
    assert {go(line).deployment, go(line).deployment} == {second.deployment}


def test_cost_policy_sends_the_head_to_the_cheapest_deployment_that_can_take_it_now(line: str) -> None:
    # dear is listed first (it would win a tie) and has more capacity; cheap costs a tenth. Each
    # request: 10 input and 10 output tokens.
    group(
        line,
        policy="cost",
        dear={"rpm": 600, "burst": 1, "pin": 5, "pout": 15},
        cheap={"rpm": 60, "burst": 2, "pin": 0.5, "pout": 1.5},
    )
    for i in range(4):
        enqueue(line, f"r{i}")
    # cheap takes what its bucket holds (two), then the head goes to dear rather than wait.
    assert [go(line).deployment for _ in range(4)] == ["cheap", "cheap", "dear", "dear"]


def test_cost_policy_ties_go_to_the_most_capacity_left(line: str) -> None:
    group(
        line,
        policy="cost",
        a={"rpm": 60, "burst": 2, "pin": 1, "pout": 1},
        b={"rpm": 600, "burst": 2, "pin": 1, "pout": 1},
    )
    enqueue(line, "r0")
    assert go(line).deployment == "b"


def test_a_pinned_request_waits_for_its_own_deployment_and_keeps_its_place(line: str) -> None:
    group(line, a={"rpm": 60, "burst": 1}, b={"rpm": 60, "burst": 1})
    enqueue(line, "x")
    enqueue(line, "pinned", deployments=["a"])
    enqueue(line, "y")
    assert go(line).deployment == "a"  # capacity ties go to the first listed
    head = go(line)
    assert head.outcome == "wait" and head.request_id == "pinned"  # b is free, but not its own
    assert limiter.status(line, input_tokens=0, output_tokens=0).waiting == 2


def test_a_429_resyncs_only_that_deployment(line: str) -> None:
    group(line, a={"rpm": 600, "burst": 1}, b={"rpm": 600, "burst": 1})
    enqueue(line, "r0")
    grant = go(line)
    limiter.settle(line, "r0", mode="refund", throttled=Throttled(hold=5.0, remaining={}))
    levels = {
        d.id: d.levels["requests"] for d in limiter.status(line, input_tokens=0, output_tokens=0).deployments
    }
    other = "b" if grant.deployment == "a" else "a"
    assert levels[grant.deployment] is not None and levels[grant.deployment] < 1
    assert levels[other] == pytest.approx(10, abs=0.1)
    enqueue(line, "r1")
    assert go(line).deployment == other  # the held one takes nothing meanwhile


def test_a_refused_key_cools_its_deployment_and_the_retry_goes_elsewhere_in_its_place(line: str) -> None:
    group(line, a=None, b=None)
    for rid in ("r0", "r1"):
        enqueue(line, rid)
    first = go(line)
    assert (first.request_id, first.deployment) == ("r0", "a")
    settled = limiter.settle(line, "r0", mode="tokens", retry=Retry(0.0), health=Health("auth"))
    assert settled.settled
    again = go(line)
    assert (again.request_id, again.deployment) == ("r0", "b")  # its own place, the other key
    dep = {d.id: d for d in limiter.status(line, input_tokens=0, output_tokens=0).deployments}
    assert 9 < dep["a"].cooling_seconds <= 10 and dep["a"].strikes == 1 and dep["a"].fault == "auth"
    assert go(line).deployment == "b"


def test_errors_cool_after_fails_in_a_row_and_cooldowns_grow_until_a_success(line: str) -> None:
    group(line, a=None)
    for i in range(4):
        enqueue(line, f"r{i}")
    limiter.settle(line, go(line).request_id, mode="keep", health=Health("error"))
    assert limiter.status(line, input_tokens=0, output_tokens=0).deployments[0].cooling_seconds == 0
    limiter.settle(line, go(line).request_id, mode="keep", health=Health("error"))
    dep = limiter.status(line, input_tokens=0, output_tokens=0).deployments[0]
    assert 9 < dep.cooling_seconds <= 10
    # Every deployment cooling: the head waits for the first to come back, within its deadline.
    head = go(line)
    assert head.outcome == "wait" and 9 < float(head.wake.countdown if head.wake else 10) <= 10


def test_a_request_whose_deployments_all_left_is_let_go_to_fail(line: str) -> None:
    group(line, a=None, b=None)
    enqueue(line, "r0", deployments=["c"])
    grant = go(line)
    assert (grant.outcome, grant.deployment) == ("go", limiter.NO_DEPLOYMENT)
    assert limiter.settle(line, "r0", mode="refund").settled


def test_a_deployment_whose_cooldown_ends_is_probed_by_one_call_and_one_failure_is_one_strike(
    line: str,
) -> None:
    limiter.configure_group(
        line,
        deployments={"a": None, "b": None},
        policy="capacity",
        cooldown={"cool": 0.3, "cool_max": 40, "fails": 1},
    )
    for i in range(5):
        enqueue(line, f"r{i}")
    first = go(line)
    assert first.deployment == "a"  # ties go to the first listed
    limiter.settle(line, first.request_id, mode="tokens", health=Health("auth"))
    assert go(line).deployment == "b"  # a cools down
    time.sleep(0.35)
    # Its cooldown is over: one request probes it, the others go elsewhere meanwhile.
    probe = go(line)
    assert (probe.request_id, probe.deployment) == ("r2", "a")
    assert [go(line).deployment for _ in range(2)] == ["b", "b"]
    limiter.settle(line, probe.request_id, mode="tokens", health=Health("auth"))
    dep = {d.id: d for d in limiter.status(line, input_tokens=0, output_tokens=0).deployments}
    # One failed probe, one strike: the cooldown doubles once (0.3 → 0.6 s), not once per call.
    assert dep["a"].strikes == 2 and 0.5 < dep["a"].cooling_seconds <= 0.6
