"""REDIS_URL naming one Redis or a Sentinel set, spelled for redis-py and for kombu."""

from __future__ import annotations

import pytest

from balancer_project.redis_url import (
    RedisUrlError,
    SentinelSet,
    celery_broker_url,
    celery_transport_options,
    sentinel_set,
)


def test_a_sentinel_set_names_its_sentinels_service_database_and_passwords() -> None:
    url = "redis+sentinel://:s%40cret@h1:26380,h2,[::1]:26381/primary-1/2?sentinel_password=sp"
    assert sentinel_set(url) == SentinelSet(
        sentinels=(("h1", 26380), ("h2", 26379), ("::1", 26381)),
        service="primary-1",
        db=2,
        password="s@cret",
        sentinel_password="sp",
    )
    assert celery_broker_url(url) == (
        "sentinel://:s%40cret@h1:26380/2;sentinel://:s%40cret@h2:26379/2;sentinel://:s%40cret@[::1]:26381/2"
    )
    assert celery_transport_options(url) == {
        "master_name": "primary-1",
        "sentinel_kwargs": {"password": "sp"},
    }


def test_one_redis_is_spelled_as_before() -> None:
    assert sentinel_set("redis://127.0.0.1:6379/0") is None
    assert celery_broker_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert celery_broker_url("unix:///run/redis.sock?db=1") == "redis+socket:///run/redis.sock?db=1"
    assert celery_transport_options("redis://127.0.0.1:6379/0") == {}


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://h1:26379", "service name"),
        ("redis+sentinel:///primary", "names no sentinel"),
        ("redis+sentinel://h1:port/primary", "not a number"),
        ("redis+sentinel://h1:70000/primary", "out of range"),
        ("redis+sentinel://h1/primary/zero", "database is a number"),
    ],
)
def test_a_sentinel_url_that_cannot_work_says_why(url: str, says: str) -> None:
    with pytest.raises(RedisUrlError, match=says):
        sentinel_set(url)
