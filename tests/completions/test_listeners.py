"""Whether a web process still holds its clients' calls (completions.listeners), against the real
Redis: its subscription says so at once, its key after a TTL, and a gap shorter than the grace
(a live listener between connections) says nothing."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from balancer_project.redis_conn import get_redis
from completions import listeners
from completions.listeners import (
    LISTENER_RECONNECT_MAX_SECONDS,
    LISTENER_TTL_SECONDS,
    LOST_GRACE_SECONDS,
    caller_gone,
    listener_key,
    lost_key,
)
from completions.workers import EPOCH_KEY


@pytest.fixture
def channel() -> Iterator[str]:
    client = get_redis()
    name = f"balancer:completions:reply:test-{uuid.uuid4().hex}"
    # Redis started empty long ago: a missing key is a sign.
    previous = client.get(EPOCH_KEY)
    client.set(EPOCH_KEY, str(time.time() - 10 * LISTENER_TTL_SECONDS))
    yield name
    client.delete(listener_key(name), lost_key(name))
    if previous is None:
        client.delete(EPOCH_KEY)
    else:
        client.set(EPOCH_KEY, previous)


def beat(channel: str) -> None:
    """What a listener's beat does (completions.waiting)."""
    get_redis().set(listener_key(channel), "1", ex=LISTENER_TTL_SECONDS)
    get_redis().delete(lost_key(channel))


def test_a_subscribed_listener_holds_its_calls(channel: str) -> None:
    beat(channel)
    pubsub = get_redis().pubsub()
    pubsub.subscribe(channel)
    try:
        assert not caller_gone(channel, waited=30)
    finally:
        pubsub.close()


def test_a_closed_subscription_says_gone_after_the_grace_while_the_key_still_lives(channel: str) -> None:
    beat(channel)
    pubsub = get_redis().pubsub()
    pubsub.subscribe(channel)
    pubsub.close()  # what a SIGKILL does to the connection
    started = time.monotonic()
    assert caller_gone(channel, waited=30)
    asked = time.monotonic() - started
    assert get_redis().exists(listener_key(channel))
    # The first to ask waited out the grace; the next knows at once.
    assert asked >= LOST_GRACE_SECONDS * 0.9
    started = time.monotonic()
    assert caller_gone(channel, waited=30)
    assert time.monotonic() - started < LOST_GRACE_SECONDS / 2


def test_a_listener_back_within_the_grace_holds_its_calls(channel: str) -> None:
    """A live listener between connections: a worker that found it unsubscribed asks again after
    the grace, and by then it is back."""
    assert LISTENER_RECONNECT_MAX_SECONDS < LOST_GRACE_SECONDS
    beat(channel)
    first = get_redis().pubsub()
    first.subscribe(channel)
    first.close()

    def reconnect() -> None:
        time.sleep(LISTENER_RECONNECT_MAX_SECONDS)
        again.subscribe(channel)
        beat(channel)

    again = get_redis().pubsub()
    helper = threading.Thread(target=reconnect)
    helper.start()
    try:
        assert not caller_gone(channel, waited=30)
        helper.join()
        # The mark it left is gone with the beat: a later gap starts its grace anew.
        assert not get_redis().exists(lost_key(channel))
    finally:
        helper.join()
        again.close()


def test_an_expired_key_says_gone_even_while_redis_keeps_a_dead_hosts_subscription(channel: str) -> None:
    pubsub = get_redis().pubsub()
    pubsub.subscribe(channel)  # a host gone without closing its connection
    try:
        assert caller_gone(channel, waited=30)
    finally:
        pubsub.close()


def test_right_after_redis_lost_its_data_a_missing_key_says_nothing(channel: str) -> None:
    get_redis().set(EPOCH_KEY, str(time.time()))
    pubsub = get_redis().pubsub()
    pubsub.subscribe(channel)
    try:
        assert not caller_gone(channel, waited=30)
    finally:
        pubsub.close()


def test_a_request_taken_a_moment_ago_costs_no_round_trip(
    channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listeners, "_script", lambda: pytest.fail("asked Redis"))
    assert not caller_gone(channel, waited=listeners.CHECK_AFTER_SECONDS / 2)
