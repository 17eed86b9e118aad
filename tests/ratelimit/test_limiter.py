"""The Lua scripts of the rate-limit layer, called through ratelimit.limiter against the real
Redis of the test run. Time-dependent checks use bounds with generous margins."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from balancer_project.redis_conn import get_redis
from ratelimit import limiter

LEASE = 30.0


@pytest.fixture
def line() -> Iterator[str]:
    """A fresh line name, forgotten after the test."""
    name = f"unit/{uuid.uuid4().hex[:8]}"
    yield name
    limiter.reset(name)


def enqueue(line: str, rid: str, tin: int = 10, tout: int = 10, **kw: float) -> int:
    return limiter.enqueue(line, rid, input_tokens=tin, output_tokens=tout, **kw)[0]


def test_only_the_head_starts_and_the_others_are_parked(line: str) -> None:
    limiter.configure(line, {"rpm": 6000})
    for rid in "abc":
        enqueue(line, rid)
    assert limiter.acquire(line, "b", lease_seconds=LEASE).outcome == "parked"
    grant = limiter.acquire(line, "a", lease_seconds=LEASE)
    assert (grant.outcome, grant.request_id) == ("go", "a")
    # Starting the head wakes the next one at once: it can start now too.
    assert grant.wake is not None and grant.wake.countdown == 0
    assert limiter.acquire(line, None, lease_seconds=LEASE).request_id == "b"
    assert limiter.acquire(line, "a", lease_seconds=LEASE).outcome == "gone"


def test_a_waiting_head_gets_one_wake_up_at_the_exact_deficit(line: str) -> None:
    # 60 requests per minute, bucket of 2: the third request waits one second.
    limiter.configure(line, {"rpm": 60, "burst": 2})
    for rid in "abc":
        enqueue(line, rid)
    assert limiter.acquire(line, "a", lease_seconds=LEASE).outcome == "go"
    grant = limiter.acquire(line, "b", lease_seconds=LEASE)
    assert grant.outcome == "go"
    # Starting b scheduled the wake-up of the new head, c, for when the bucket holds a request.
    assert grant.wake is not None and 0.95 <= grant.wake.countdown <= 1.0
    # c's own task finds that wake-up already scheduled and schedules none.
    again = limiter.acquire(line, "c", lease_seconds=LEASE)
    assert again.outcome == "wait" and again.wake is None
    time.sleep(grant.wake.countdown)
    assert limiter.acquire(line, None, lease_seconds=LEASE).request_id == "c"


def test_token_deficit_sets_the_countdown(line: str) -> None:
    # 100 tokens per second, bucket of 100 tokens.
    limiter.configure(line, {"tpm": 6000, "burst": 1})
    enqueue(line, "a", tin=50, tout=30)
    enqueue(line, "b", tin=50, tout=30)
    grant = limiter.acquire(line, "a", lease_seconds=LEASE)
    assert grant.outcome == "go"
    # 20 tokens left, b needs 80: its wake-up is 0.6 s away at 100 tokens per second.
    assert grant.wake is not None and 0.59 <= grant.wake.countdown <= 0.6
    assert limiter.acquire(line, "b", lease_seconds=LEASE).outcome == "wait"


def test_settling_refunds_unused_tokens_and_is_idempotent(line: str) -> None:
    limiter.configure(line, {"tpm": 60, "burst": 60})  # 60 tokens, refill 1 per second
    enqueue(line, "a", tin=10, tout=40)
    assert limiter.acquire(line, "a", lease_seconds=LEASE).outcome == "go"
    level = limiter.status(line, input_tokens=0, output_tokens=0).levels["tokens"]
    assert level is not None and 10 <= level < 12
    limiter.settle(line, "a", mode="usage", input_tokens=10, output_tokens=5)  # 35 unused come back
    level = limiter.status(line, input_tokens=0, output_tokens=0).levels["tokens"]
    assert level is not None and 45 <= level < 47
    again = limiter.settle(line, "a", mode="usage", input_tokens=10, output_tokens=5)
    assert not again.settled and again.ticket is None  # settled already
    assert limiter.status(line, input_tokens=0, output_tokens=0).levels["tokens"] == pytest.approx(
        level, abs=1
    )


def test_refund_gives_back_the_request_too(line: str) -> None:
    limiter.configure(line, {"rpm": 1, "burst": 60})
    enqueue(line, "a")
    enqueue(line, "b")
    assert limiter.acquire(line, "a", lease_seconds=LEASE).outcome == "go"
    assert limiter.acquire(line, "b", lease_seconds=LEASE).outcome == "wait"
    settled = limiter.settle(line, "a", mode="refund")
    assert settled.ticket == 1
    assert settled.wake is not None and settled.wake.countdown == 0
    assert limiter.acquire(line, None, lease_seconds=LEASE).request_id == "b"


def test_concurrency_slot_is_returned_on_settle_and_wakes_the_head(line: str) -> None:
    limiter.configure(line, {"conc": 1})
    enqueue(line, "a")
    enqueue(line, "b")
    assert limiter.acquire(line, "a", lease_seconds=LEASE).outcome == "go"
    assert limiter.acquire(line, "b", lease_seconds=LEASE).outcome == "wait"
    assert limiter.status(line, input_tokens=0, output_tokens=0).in_flight == 1
    wake = limiter.settle(line, "a", mode="usage", input_tokens=1, output_tokens=1).wake
    assert wake is not None and wake.countdown == 0
    assert limiter.acquire(line, None, lease_seconds=LEASE).request_id == "b"


def test_a_slot_held_by_a_crashed_worker_frees_itself_after_the_lease(line: str) -> None:
    limiter.configure(line, {"conc": 1})
    enqueue(line, "a")
    enqueue(line, "b")
    assert limiter.acquire(line, "a", lease_seconds=0.2).outcome == "go"  # never settled
    assert limiter.acquire(line, "b", lease_seconds=LEASE).outcome == "wait"
    time.sleep(0.3)
    assert limiter.acquire(line, "b", lease_seconds=LEASE).outcome == "go"


def test_requests_past_their_deadline_leave_the_line(line: str) -> None:
    limiter.configure(line, {"rpm": 1, "burst": 60})
    enqueue(line, "a")
    enqueue(line, "b", max_wait=0.1)
    enqueue(line, "c")
    assert limiter.acquire(line, "a", lease_seconds=LEASE).outcome == "go"
    time.sleep(0.2)
    wake, expired = limiter.watch(line, grace=2)
    assert expired == ["b"]
    assert limiter.status(line, input_tokens=0, output_tokens=0).waiting == 1
    assert limiter.acquire(line, "c", lease_seconds=LEASE).outcome == "wait"  # c is head now


def test_leaving_head_wakes_the_next_one(line: str) -> None:
    limiter.configure(line, {"conc": 1})
    for rid in "abc":
        enqueue(line, rid)
    assert limiter.acquire(line, "a", lease_seconds=LEASE).wake is not None  # b's, due when a's slot frees
    limiter.settle(line, "a", mode="usage", input_tokens=1, output_tokens=1)  # b's wake-up: now
    left, wake = limiter.leave(line, "b")  # cancelled before its wake-up ran
    assert left and wake is not None and wake.countdown == 0  # c is head and may start
    assert limiter.acquire(line, None, lease_seconds=LEASE).request_id == "c"
    assert limiter.leave(line, "b") == (False, None)


def test_a_retried_request_keeps_its_place_and_holds_the_line_for_its_backoff(line: str) -> None:
    limiter.configure(line, {"rpm": 6000})
    ticket = enqueue(line, "a")
    enqueue(line, "b")
    assert limiter.acquire(line, "a", lease_seconds=LEASE).outcome == "go"
    # Settling the failed attempt and re-entering the line are one step: b is never woken.
    settled = limiter.settle(line, "a", mode="refund", retry=limiter.Retry(0.3))
    assert settled.ticket == ticket
    assert settled.wake is not None and 0.25 <= settled.wake.countdown <= 0.3
    assert limiter.acquire(line, "b", lease_seconds=LEASE).outcome == "parked"
    assert limiter.acquire(line, None, lease_seconds=LEASE).outcome == "wait"  # a's backoff
    time.sleep(0.3)
    assert limiter.acquire(line, None, lease_seconds=LEASE).request_id == "a"
    # The line's audit shows the grant, the re-entry in a's own place, and the second grant.
    assert [(kind, t) for kind, t, _ in reversed(limiter.audit(line))] == [
        ("grant", ticket),
        ("reentry", ticket),
        ("grant", ticket),
    ]


def test_no_one_behind_a_retried_request_is_granted_between_its_refund_and_its_re_entry(line: str) -> None:
    # The seed bug: A granted, A refunded (waking B), B granted, A re-enters behind B.
    limiter.configure(line, {"rpm": 60, "burst": 1})  # one at a time, one per second
    enqueue(line, "a")
    enqueue(line, "b")
    assert limiter.acquire(line, "a", lease_seconds=LEASE).outcome == "go"
    settled = limiter.settle(line, "a", mode="refund", retry=limiter.Retry(0.0))
    assert settled.wake is not None and settled.wake.countdown == 0
    # Whoever is woken now, the head is a again.
    grant = limiter.acquire(line, None, lease_seconds=LEASE)
    assert (grant.outcome, grant.request_id) == ("go", "a")
    assert limiter.acquire(line, "b", lease_seconds=LEASE).outcome == "wait"


def test_a_provider_429_empties_the_bucket_and_holds_the_line_for_every_process(line: str) -> None:
    limiter.configure(line, {"rpm": 600, "burst": 10})  # 100 requests, 10 per second
    for rid in "abc":
        enqueue(line, rid)
    assert limiter.acquire(line, "a", lease_seconds=LEASE).outcome == "go"
    throttled = limiter.Throttled(hold=0.5, remaining={"req": 0})
    settled = limiter.settle(line, "a", mode="refund", retry=limiter.Retry(0.0), throttled=throttled)
    # The bucket had ~99 left; the provider says 0 are, and to wait half a second.
    assert settled.wake is not None and 0.45 <= settled.wake.countdown <= 0.5
    level = limiter.status(line, input_tokens=0, output_tokens=0).levels["requests"]
    assert level is not None and level < 1
    assert limiter.acquire(line, None, lease_seconds=LEASE).outcome == "wait"
    time.sleep(0.5)
    assert limiter.acquire(line, None, lease_seconds=LEASE).request_id == "a"  # still first


def test_margins_slow_the_rate_and_shrink_the_bucket(line: str) -> None:
    # 60 per second with a 10 % margin: 54 per second; a 1 s bucket of 60 less 0.5 s: 30.
    limiter.configure(line, {"rpm": 3600, "burst": 1, "margin": 0.1, "margin_s": 0.5})
    enqueue(line, "a")
    assert limiter.status(line, input_tokens=0, output_tokens=0).levels["requests"] == pytest.approx(30)
    # One per second with a 10 % margin: one per 1.11 s once the bucket of 10 is empty.
    limiter.reset(line)
    limiter.configure(line, {"rpm": 60, "burst": 10, "margin": 0.1, "margin_s": 0})
    for i in range(11):
        enqueue(line, f"r{i}")
    grants = [limiter.acquire(line, None, lease_seconds=LEASE) for _ in range(10)]
    assert [g.outcome for g in grants] == ["go"] * 10
    # The tenth grant scheduled the wake-up of the eleventh.
    assert grants[-1].wake is not None and grants[-1].wake.countdown == pytest.approx(1 / 0.9, rel=0.05)


def test_the_python_bucket_rule_matches_the_lua_one(line: str) -> None:
    from ratelimit.models import effective_bucket

    for rpm, burst, margin, margin_s in ((120, 60, 0.01, 0.5), (6, 10, 0.02, 2.0), (600, 1, 0.0, 5.0)):
        limiter.reset(line)
        limiter.configure(line, {"rpm": rpm, "burst": burst, "margin": margin, "margin_s": margin_s})
        rate, cap = effective_bucket(
            per_minute=rpm, burst_seconds=burst, margin=margin, margin_seconds=margin_s, requests=True
        )
        assert rate == pytest.approx(rpm / 60 * (1 - margin))
        st = limiter.status(line, input_tokens=0, output_tokens=0)
        assert st.levels["requests"] == pytest.approx(cap, abs=1e-5)
        assert st.limits_in_force["requests"] == pytest.approx(rpm)  # the limit, before its margin


def test_a_lost_wake_up_is_replaced_by_the_watch(line: str) -> None:
    limiter.configure(line, {"rpm": 60, "burst": 1})
    enqueue(line, "a")
    enqueue(line, "b")
    first = limiter.acquire(line, "a", lease_seconds=LEASE).wake
    assert first is not None  # b's wake-up... and suppose its task is lost
    assert limiter.watch(line, grace=0.05)[0] is None  # not overdue yet
    time.sleep(first.countdown + 0.1)
    wake, _ = limiter.watch(line, grace=0.05)
    assert wake is not None and wake.countdown == 0


def test_status_estimates_the_wait_of_a_new_request(line: str) -> None:
    limiter.configure(line, {"rpm": 60, "burst": 1})
    for rid in "abc":
        enqueue(line, rid)
    assert limiter.acquire(line, "a", lease_seconds=LEASE).outcome == "go"
    st = limiter.status(line, input_tokens=0, output_tokens=0)
    assert (st.waiting, st.in_flight, st.granted) == (2, 1, 1)
    # Two ahead and the new one, one per second, from an empty bucket: about 3 s.
    assert 2.8 <= st.estimated_wait_seconds <= 3.0


def test_an_unlimited_line_lets_the_head_go_at_once(line: str) -> None:
    limiter.configure(line, None)
    enqueue(line, "a")
    assert limiter.acquire(line, "a", lease_seconds=LEASE).outcome == "go"


def test_grants_are_logged_in_ticket_order_with_their_lag(line: str) -> None:
    limiter.configure(line, {"rpm": 6000})
    for rid in "abc":
        enqueue(line, rid)
    for _ in range(3):
        assert limiter.acquire(line, None, lease_seconds=LEASE).outcome == "go"
    assert limiter.grant_tickets(line) == [3, 2, 1]
    assert len(limiter.grant_lags(line)) == 3


def test_a_lower_limit_reported_by_the_provider_is_used_until_it_recovers(line: str) -> None:
    limiter.configure(line, {"tpm": 6000, "burst": 1})  # 100 tokens per second, bucket of 100
    assert limiter.adapt(line, {"tpm": 600}) == 1  # the provider says 10 per second
    assert limiter.status(line, input_tokens=0, output_tokens=0).limits_in_force["tokens"] == 600
    enqueue(line, "a", tin=40, tout=40)  # 80 tokens: more than the 10-token bucket now
    enqueue(line, "b", tin=5, tout=5)
    grant = limiter.acquire(line, "a", lease_seconds=LEASE)
    assert grant.outcome == "go"  # a full bucket lets it through rather than stall the line
    assert grant.wake is not None and grant.wake.countdown > 5  # b waits for the debt to be paid
    assert limiter.adapt(line, {"tpm": 6000, "rpm": 5}) == 0  # back to the quota; no rpm quota to lower
    assert limiter.status(line, input_tokens=0, output_tokens=0).limits_in_force["tokens"] == 6000


def test_a_wait_longer_than_a_countdown_is_chained_by_its_own_wake_ups(line: str) -> None:
    # One request per 2 s; a wake-up task may wait 0.5 s at most.
    limiter.configure(line, {"rpm": 30, "burst": 4, "maxc": 0.5})  # a bucket of 2
    for rid in "abc":
        enqueue(line, rid)
    assert limiter.acquire(line, "a", lease_seconds=LEASE).outcome == "go"
    grant = limiter.acquire(line, "b", lease_seconds=LEASE)
    assert grant.outcome == "go" and grant.wake is not None  # c's: due in 2 s, fired in 0.5
    assert grant.wake.countdown == pytest.approx(0.5, abs=0.01)
    wakes = 0
    wake = grant.wake
    while True:
        time.sleep(wake.countdown)
        # Each wake-up that finds the head not yet due publishes the next one itself: nothing
        # waits for beat's tend to notice a wake-up overdue.
        woken = limiter.acquire(line, None, lease_seconds=LEASE, wake_at=wake.at)
        if woken.outcome == "go":
            break
        wakes += 1
        assert woken.outcome == "wait" and woken.wake is not None, woken
        wake = woken.wake
    assert woken.request_id == "c"
    assert 2 <= wakes <= 4


def test_a_wake_up_that_runs_early_by_redis_clock_still_schedules_the_next(line: str) -> None:
    limiter.configure(line, {"rpm": 30, "burst": 1})  # one request per 2 s
    for rid in "ab":
        enqueue(line, rid)
    grant = limiter.acquire(line, "a", lease_seconds=LEASE)
    assert grant.wake is not None and grant.wake.countdown > 1.5
    # The task ran a little before its time (a worker's clock ahead of Redis's, say).
    early = limiter.acquire(line, None, lease_seconds=LEASE, wake_at=grant.wake.at)
    assert early.outcome == "wait" and early.wake is not None  # served: the next is published
    # A duplicate of a wake-up that is no longer the pending one does not schedule another.
    assert limiter.acquire(line, None, lease_seconds=LEASE, wake_at=grant.wake.at).wake is None


def test_recent_history_is_kept_by_time_and_status_only_reads(line: str) -> None:
    from balancer_project.redis_conn import get_redis

    r = get_redis()
    limiter.configure(line, {"rpm": 6000, "conc": 5})
    grants_key = limiter.line_keys(line)[limiter.KEY_NAMES.index("grants")]
    # Grants from an hour ago, as a long run would have left them.
    r.rpush(grants_key, *[f"{i}@{time.time() - 3600:.6f}" for i in range(3)])
    enqueue(line, "a", flow="k1")
    assert limiter.acquire(line, "a", lease_seconds=0.01).outcome == "go"
    # The stale entries went with the new grant; only the last five minutes stay.
    assert [ticket for ticket, _ in limiter.grants(line)] != [] and len(r.lrange(grants_key, 0, -1)) == 1
    time.sleep(0.05)  # its slot's lease has run out: lost, for all status can tell
    fly = limiter.line_keys(line)[limiter.KEY_NAMES.index("fly")]
    before = r.zcard(fly)
    assert limiter.status(line, input_tokens=0, output_tokens=0).in_flight == 0
    assert r.zcard(fly) == before == 1  # status counted only live leases, and changed nothing


def test_a_line_whose_owner_is_gone_takes_its_keys_with_it_once_idle(line: str) -> None:
    from balancer_project.redis_conn import get_redis

    limiter.configure(line, {"rpm": 6000})
    enqueue(line, "a")
    assert not limiter.forget(line)  # a request waits in it: it stays
    assert limiter.acquire(line, "a", lease_seconds=LEASE).outcome == "go"
    assert not limiter.forget(line)  # one holds its reservation
    limiter.settle(line, "a", mode="usage", input_tokens=1, output_tokens=1)
    assert limiter.forget(line)
    assert list(get_redis().scan_iter(match=f"rl:{{{line}}}:*")) == []


def test_a_waiting_request_knows_its_place_and_when_it_may_start(line: str) -> None:
    # 60 requests per minute, bucket of 2: two start now, then one a second.
    limiter.configure(line, {"rpm": 60, "burst": 2})
    for rid in "abcdef":
        enqueue(line, rid)
    places = {rid: limiter.place(line, rid) for rid in "abcdef"}
    assert [p.position for p in places.values() if p] == [0, 1, 2, 3, 4, 5]
    waits = [p.estimated_wait_seconds for p in places.values() if p]
    assert waits[:2] == [0.0, 0.0]  # the bucket holds two
    assert waits == sorted(waits) and waits[5] == pytest.approx(4.0, abs=0.2)  # then one a second
    assert limiter.acquire(line, "a", lease_seconds=LEASE).outcome == "go"
    assert limiter.place(line, "a") is None  # started: no longer waiting
    assert limiter.place(line, "b") == limiter.Place(0, pytest.approx(0.0, abs=0.05))  # type: ignore[arg-type]
    assert limiter.place(line, "nobody") is None


def test_a_bucket_saved_on_another_redis_primary_starts_empty(line: str) -> None:
    """What a replica promoted by a failover holds may lack the primary's last grants: a bucket
    last saved on another primary (its replication id) is emptied as of its first use here, and
    refills at its rate from there, rather than granting again what the replica forgot."""
    limiter.configure(line, {"rpm": 60, "burst": 10})  # ten at once, then one a second
    enqueue(line, "a")
    enqueue(line, "b")
    assert limiter.acquire(line, "a", lease_seconds=LEASE).outcome == "go"
    bucket = limiter.line_keys(line)[limiter.KEY_NAMES.index("b")]
    client = get_redis()
    assert client.hget(bucket, "rid") == client.info("replication")["master_replid"]
    client.hset(bucket, "rid", "0" * 40)  # as a promoted replica would find it
    grant = limiter.acquire(line, "b", lease_seconds=LEASE)
    # Nine requests were left in the bucket; emptied, the next one waits a second's refill...
    assert grant.outcome == "wait" and grant.wake is not None and 0.9 <= grant.wake.countdown <= 1.0
    # ... counted from the first use: a second look finds it refilling, not emptied again.
    time.sleep(0.3)
    level = limiter.status(line, input_tokens=10, output_tokens=10).levels["requests"]
    assert level is not None and 0.2 < level < 1
    time.sleep(grant.wake.countdown - 0.3)
    assert limiter.acquire(line, None, lease_seconds=LEASE).request_id == "b"


def renew(line: str, rid: str, token: str, deployment: str = "") -> bool:
    pipe = get_redis().pipeline(transaction=False)
    pending = limiter.renew_in(pipe, line, rid, token=token, lease_seconds=LEASE, deployment=deployment)
    return pending.result(pipe.execute(raise_on_error=False))


def test_a_slot_a_promoted_replica_lacks_is_put_back_by_its_running_attempts_renewal(line: str) -> None:
    """A promoted replica may lack the last grants: their calls still run, holding slots at the
    provider that the new primary does not know. A deployment with a concurrency limit takes
    nothing new for a while (`settling`), in which the attempt's renewal puts its slot back; its
    settlement frees it again; a settled request's late renewal puts nothing back."""
    limiter.configure(line, {"conc": 1})
    keys = dict(zip(limiter.KEY_NAMES, limiter.line_keys(line), strict=True))
    client = get_redis()
    enqueue(line, "a")
    assert limiter.acquire(line, "a", lease_seconds=LEASE, token="t-a").outcome == "go"
    # As the promoted replica has it: no reservation, no slot, the bucket under another primary.
    client.hdel(keys["res"], "a")
    client.zrem(keys["fly"], "a")
    client.hset(keys["b"], "rid", "0" * 40)
    enqueue(line, "b")
    grant = limiter.acquire(line, "b", lease_seconds=LEASE, token="t-b", settling_seconds=1.0)
    # The slot looks free, but the new primary cannot know: b waits while running calls renew.
    assert grant.outcome == "wait" and grant.wake is not None and 0.9 <= grant.wake.countdown <= 1.0
    assert renew(line, "a", "t-a")
    assert client.zscore(keys["fly"], "a") is not None
    time.sleep(grant.wake.countdown)
    grant = limiter.acquire(line, "b", lease_seconds=LEASE, token="t-b", settling_seconds=1.0)
    assert grant.outcome == "wait"  # the one slot is a's again
    # Another attempt's renewal is refused now; a's settlement frees the slot and b goes.
    assert not renew(line, "a", "t-x")
    assert limiter.settle(line, "a", mode=limiter.SettleMode.USAGE, input_tokens=5, token="t-a").settled
    assert client.zscore(keys["fly"], "a") is None
    grant = limiter.acquire(line, "b", lease_seconds=LEASE, token="t-b")
    assert grant.outcome == "go"
    assert limiter.settle(line, "b", mode=limiter.SettleMode.USAGE, token="t-b").settled
    # a's renewal pass crossed its settlement: only within a lease of the failover would it put
    # a slot back; once that lease is over, nothing.
    client.hset(keys["b"], "fr", "0")
    assert renew(line, "a", "t-a")
    assert client.zscore(keys["fly"], "a") is None and client.hget(keys["res"], "a") is None


def test_a_line_redis_lost_is_refused_until_it_is_written_again_and_then_starts_empty(line: str) -> None:
    """Redis restarted without its data: a line a caller knows to have a quota has no
    configuration. Nothing enters it, or is taken from it, until it is written again (anything
    let in would go unlimited); restored, its buckets start empty (or full) and its slots unknown
    while calls may still run; a bucket written since the loss is left alone."""
    keys = dict(zip(limiter.KEY_NAMES, limiter.line_keys(line), strict=True))
    client = get_redis()
    with pytest.raises(limiter.LineLost):
        limiter.enqueue(line, "a", input_tokens=1, output_tokens=1, configured=True)
    with pytest.raises(limiter.LineLost):
        limiter.take(line, "a", input_tokens=1, output_tokens=1, lease_seconds=LEASE, configured=True)
    assert client.zcard(keys["line"]) == 0 and client.hlen(keys["res"]) == 0
    limiter.configure(line, {"rpm": 60, "burst": 2, "conc": 1})
    assert limiter.restore(line, empty=True, running=True) == 1
    assert limiter.restore(line, empty=False, running=False) == 0  # started already: left alone
    enqueue(line, "a", configured=True)
    grant = limiter.acquire(line, "a", lease_seconds=LEASE, settling_seconds=1.0)
    # Empty, refilling from now at one a second; and a running call may hold the one slot.
    assert grant.outcome == "wait" and grant.wake is not None and 0.9 <= grant.wake.countdown <= 1.0
    assert float(client.hget(keys["b"], "req") or -1) < 0.1
    assert client.hget(keys["b"], "fr") is not None
    # A line restored without calls in its span nor running starts full, its slots known.
    other = f"{line}-full"
    try:
        limiter.configure(other, {"rpm": 60, "burst": 2, "conc": 1})
        assert limiter.restore(other, empty=False, running=False) == 1
        enqueue(other, "b", configured=True)
        assert limiter.acquire(other, "b", lease_seconds=LEASE, settling_seconds=1.0).outcome == "go"
    finally:
        limiter.reset(other)


def test_a_budget_period_built_on_another_redis_primary_is_built_again() -> None:
    key = limiter.budget_key(f"unit-{uuid.uuid4().hex[:8]}", 0)
    client = get_redis()
    try:
        assert limiter.budget_init(key, spent=5, reserved={}, ttl=60)
        assert not limiter.budget_init(key, spent=7, reserved={}, ttl=60)  # built already
        assert limiter.budget_read([key])[0].built
        client.hset(key, "init", "0" * 40)  # as a promoted replica would find it
        assert not limiter.budget_read([key])[0].built
        assert limiter.budget_init(key, spent=7, reserved={"r1": 3}, ttl=60)
        figures = limiter.budget_read([key])[0]
        assert (figures.spent, figures.reserved, figures.open, figures.built) == (7, 3, 1, True)
    finally:
        client.delete(key)
