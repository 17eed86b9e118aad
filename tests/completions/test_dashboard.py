"""The live dashboard's figures: the minute-by-minute history workers write, and the state the page
draws, read over HTTP from the live web process with a staff login."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest
import redis
from django.contrib.auth import get_user_model
from django.test import Client

from balancer_project import redis_conn
from balancer_project.redis_conn import get_redis
from completions import history
from tests.completions.test_groups import chat, wait_all
from tests.conftest import closed_port
from tests.live import admin_session

pytestmark = pytest.mark.timeout(120)


def test_history_counts_each_minute_and_reads_percentiles_from_its_bins() -> None:
    model = f"test/{uuid.uuid4().hex[:8]}"  # a name no worker writes
    now = time.time()
    pipe = get_redis().pipeline(transaction=False)
    for status, wait in ((200, 0.2), (200, 0.2), (429, None), (500, 3.0), (None, None), (499, None)):
        history.record(
            pipe, model=model, status=status, input_tokens=10, output_tokens=5, queue_seconds=wait, at=now
        )
    history.record(
        pipe, model=model, status=200, input_tokens=1, output_tokens=1, queue_seconds=0.0, at=now - 120
    )
    pipe.execute()
    current, series = history.last_hour(now, minutes=61)
    assert current == history.minute_of(now)
    mine = series[model]
    assert len(mine.calls) == 61 and len(mine.waits) == history.WAIT_MINUTES
    assert (mine.calls[-1], mine.rate_limited[-1], mine.errors[-1]) == (6, 1, 2)  # 499: the client left
    assert (mine.counts["input"][-1], mine.counts["output"][-1], mine.tokens[-1]) == (60, 30, 90)
    assert mine.calls[-3:] == [1, 0, 6] and sum(mine.calls) == 7
    # Waits 0.2, 0.2 and 3.0: the median in the (0.1, 0.2] bin, the 99th in (2, 3].
    p50 = history.percentile(mine.waits[-1:], 0.5)
    p99 = history.percentile(mine.waits[-1:], 0.99)
    assert p50 is not None and 0.1 < p50 <= 0.2
    assert p99 is not None and 2.0 < p99 <= 3.0
    assert history.percentile(mine.waits[-2:-1], 0.5) is None
    # Three minutes on, those minutes have settled into the process's window (read once) and
    # the new one comes from Redis.
    later = now + 180
    history.record(
        pipe, model=model, status=200, input_tokens=1, output_tokens=1, queue_seconds=None, at=later
    )
    pipe.execute()
    _, series = history.last_hour(later, minutes=61)
    assert series[model].calls[-6:] == [1, 0, 6, 0, 0, 1]
    ttl = get_redis().ttl(f"{history.PREFIX}{current}")
    assert 0 < ttl <= history.KEEP_SECONDS  # type: ignore[operator]


@pytest.mark.django_db
def test_the_dashboard_is_for_staff_only(client: Client) -> None:
    page = client.get("/admin/dashboard/")
    assert page.status_code == 302 and "/admin/login/" in page["Location"]
    state = client.get("/admin/dashboard/state.json")
    assert state.status_code == 403 and state.json()["error"]["type"] == "forbidden"
    user = get_user_model().objects.create_user("someone", password="pw-for-tests-only")
    client.force_login(user)
    assert client.get("/admin/dashboard/state.json").status_code == 403
    assert client.get("/admin/dashboard/").status_code == 302
    assert client.post("/admin/dashboard/state.json").status_code in (403, 405)


@pytest.mark.django_db
def test_the_admin_index_and_the_dashboard_page_link_each_other(client: Client) -> None:
    client.force_login(get_user_model().objects.create_superuser("root", "root@example.com", "pw"))
    index = client.get("/admin/").content.decode()
    assert 'href="/admin/dashboard/"' in index
    page = client.get("/admin/dashboard/").content.decode()
    assert "/static/completions/dashboard.js" in page and "/admin/dashboard/state.json" in page
    assert "cdn" not in page.lower() and "https://" not in page  # every asset is the project's own


@pytest.mark.django_db
def test_the_dashboard_says_so_when_redis_is_unreachable(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.force_login(get_user_model().objects.create_superuser("root", "root@example.com", "pw"))
    # This process's Redis client, pointed at a port where nothing listens.
    monkeypatch.setattr(redis_conn, "_client", redis.Redis(port=closed_port(), socket_connect_timeout=1))
    state = client.get("/admin/dashboard/state.json")
    assert state.status_code == 503 and state.json()["error"]["type"] == "unavailable"


def staff_session(base_url: str, django_db_blocker: Any) -> httpx.Client:
    username, password = f"staff-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    with django_db_blocker.unblock():
        get_user_model().objects.create_superuser(username, f"{username}@example.com", password)
    return admin_session(base_url, username, password)


def test_the_dashboard_state_follows_a_group_draining(
    api: httpx.Client, web: Any, marker: str, django_db_blocker: Any
) -> None:
    staff = staff_session(web.url, django_db_blocker)
    page = staff.get("/admin/dashboard/")
    assert page.status_code == 200 and 'id="dashboard"' in page.text

    def pool() -> dict[str, Any]:
        state = staff.get("/admin/dashboard/state.json").json()
        return next(g for g in state["groups"] if g["name"] == "gpt-pool")

    before = pool()
    # Two deployments of 10 requests per second each: 60 requests wait a couple of seconds.
    count = 60
    ids = [
        api.post("/completions", json={"model": "gpt-pool", "payload": chat(marker, i), "wait": 0}).json()[
            "id"
        ]
        for i in range(count)
    ]
    during = pool()
    assert during["waiting"] + during["rows"]["queued"] + during["rows"]["running"] > 0
    if during["waiting"]:  # waiting and utilisation cannot disagree: what refilled is spoken for
        assert during["in_use_percent"] == 100 and during["utilisation_percent"] >= 100, during
    assert [r["status"] for r in wait_all(api, ids)] == ["succeeded"] * count
    after = pool()
    assert after["calls_per_minute"] >= before["calls_per_minute"] + count * 0.5
    assert after["queue_wait_p50_seconds"] is not None and after["queue_wait_p99_seconds"] is not None
    assert after["queue_wait_p50_seconds"] <= after["queue_wait_p99_seconds"]
    assert 0 < after["utilisation_percent"]
    by_name = {d["name"]: d for d in after["deployments"]}
    assert set(by_name) == {"pool-a/gpt-pool", "pool-b/gpt-pool"}
    for dep in by_name.values():
        assert dep["calls_per_minute"] > 0
        assert dep["buckets"]["requests"]["capacity"] > 0
        assert dep["limits_in_force_per_minute"]["requests"] > 0
        assert dep["cooldown"]["seconds_left"] == 0
        assert dep["chart"]["unit"] == "utilisation" and len(dep["chart"]["values"]) == 60
    # The client key that sent them is a flow of the line, by its name.
    assert any(f["name"].startswith("test-client") and f["granted_last_minute"] > 0 for f in after["flows"])
    # Each model served alone is listed with its own line; a group's deployments only under
    # their group (their by-name line serves nothing).
    models = {m["name"]: m for m in staff.get("/admin/dashboard/state.json").json()["models"]}
    assert "pool-a/gpt-pool" not in models and "pool-b/gpt-pool" not in models
    assert models["mock/mock-gpt"]["queue"] == "llm.mock.mock-gpt"
    staff.close()


def test_the_dashboard_shows_upstream_errors_and_cooldowns(
    api: httpx.Client, web: Any, marker: str, django_db_blocker: Any
) -> None:
    staff = staff_session(web.url, django_db_blocker)
    # gpt-failover tries, in order, a key the upstream refuses and an upstream that is down.
    done = api.post(
        "/completions", json={"model": "gpt-failover", "payload": chat(marker), "wait": 30}
    ).json()
    assert done["status"] == "succeeded"
    state = staff.get("/admin/dashboard/state.json").json()
    group = next(g for g in state["groups"] if g["name"] == "gpt-failover")
    by_name = {d["name"]: d for d in group["deployments"]}
    cooling = {name for name, d in by_name.items() if d["cooldown"]["seconds_left"] > 0}
    assert cooling and cooling <= {"failover-revoked/gpt-failover", "failover-down/gpt-failover"}
    assert all(by_name[name]["cooldown"]["last_fault"] for name in cooling)
    assert group["errors_last_hour"] >= 1 and group["calls_last_hour"] >= 1
    assert by_name["failover-ok/gpt-failover"]["calls_last_hour"] >= 1
    # No deployment of the group has a limit: its chart counts calls.
    assert group["chart"]["unit"] == "calls" and group["utilisation_percent"] is None
    staff.close()


def test_the_dashboard_lists_client_keys_with_a_rate_limit(
    web: Any, worker: Any, marker: str, django_db_blocker: Any
) -> None:
    from completions.services import api_key_create
    from ratelimit.models import KeyQuota

    name = f"limited-{uuid.uuid4().hex[:6]}"
    with django_db_blocker.unblock():
        key, raw = api_key_create(name=name)
        KeyQuota.objects.create(api_key=key, requests_per_minute=60, burst_seconds=2)
    with httpx.Client(
        base_url=f"{web.url}/api/v1", headers={"Authorization": f"Bearer {raw}"}, timeout=60
    ) as api:
        # A burst of two requests; the next three wait in the key's own line, a second apart.
        ids = [
            api.post(
                "/completions", json={"model": "mock-gpt", "payload": chat(marker, i), "wait": 0}
            ).json()["id"]
            for i in range(5)
        ]
        staff = staff_session(web.url, django_db_blocker)
        mine = next(k for k in staff.get("/admin/dashboard/state.json").json()["keys"] if k["name"] == name)
        assert mine["limits_in_force_per_minute"] == {"requests": 60}
        assert mine["buckets"]["requests"]["capacity"] == 2
        assert mine["queued"] + mine["waiting"] > 0 and mine["fail_fast"] is False
        assert [r["status"] for r in wait_all(api, ids)] == ["succeeded"] * 5
    staff.close()


@pytest.mark.django_db
def test_the_quota_list_shows_a_groups_deployment_on_its_groups_line(client: Client) -> None:
    from completions.models import ModelGroup, Provider, ServedModel
    from ratelimit.models import Quota

    group = ModelGroup.objects.create(name=f"g-{uuid.uuid4().hex[:6]}")
    provider = Provider.objects.create(name=f"p{uuid.uuid4().hex[:6]}", kind="mock")
    alone = ServedModel.objects.create(provider=provider, name="alone")
    member = ServedModel.objects.create(provider=provider, name="member", group=group)
    for served in (alone, member):
        Quota.objects.create(served_model=served, requests_per_minute=60)
    client.force_login(get_user_model().objects.create_superuser("quotas", "q@example.com", "pw"))
    page = client.get("/admin/ratelimit/quota/")
    assert page.status_code == 200
    assert f"(group {group.name})" in page.content.decode()  # the member's line is its group's
