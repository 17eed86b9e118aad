"""Revocation is complete: a deactivated key's waiting requests end `cancelled` with the reason
and none of them starts afterwards; staff can cancel queued requests; a staff user's browsable
key honours is_active. (A new key shown once: tests/test_project.py.)"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.test import Client

from completions.attempts import completion_request_execute
from completions.maintenance import completion_requests_sweep
from completions.models import ApiKey, CompletionRequest, CompletionStatus, Provider, ServedModel
from completions.selectors import api_key_get_by_raw
from completions.services import api_key_create, api_key_for_user
from ratelimit.models import Quota
from tests.live import wait_until


def _admin(name: str) -> Client:
    user = get_user_model().objects.create_superuser(name, f"{name}@example.com", "pw-tests-only")
    client = Client()
    client.force_login(user)
    return client


def _key_form(key: ApiKey, **changes: str) -> dict[str, str]:
    form = {
        "name": key.name,
        "weight": str(key.weight),
        "max_priority": key.max_priority,
        "quota-TOTAL_FORMS": "0",
        "quota-INITIAL_FORMS": "0",
        "budget-TOTAL_FORMS": "0",
        "budget-INITIAL_FORMS": "0",
    }
    if key.is_active:
        form["is_active"] = "on"
    form.update(changes)
    return form


def test_deactivating_a_key_cancels_its_queued_requests_and_none_runs_after(
    web: Any, worker: Any, make_key: Any, django_db_blocker: Any, marker: str
) -> None:
    name = f"mock-revoke-{marker[-6:]}"
    # In one transaction: no process may see the model without its quota (and run one unlimited).
    with django_db_blocker.unblock(), transaction.atomic():
        served = ServedModel.objects.create(provider=Provider.objects.get(name="mock"), name=name)
        Quota.objects.create(
            served_model=served, requests_per_minute=6, burst_seconds=10
        )  # 1, then 1 per 10 s
    raw = make_key("revoked")
    other = make_key("bystander")
    client = httpx.Client(
        base_url=f"{web.url}/api/v1", headers={"Authorization": f"Bearer {raw}"}, timeout=30
    )
    body = {"provider": "mock", "model": name, "payload": {"messages": [{"role": "user", "content": marker}]}}
    first = client.post("/completions", json={**body, "wait": 30}).json()
    assert first["status"] == "succeeded"  # the bucket's one request; the rest must wait
    ids = [client.post("/completions", json={**body, "wait": 0}).json()["id"] for _ in range(6)]
    bystander = httpx.post(
        f"{web.url}/api/v1/completions",
        json={**body, "wait": 0},
        headers={"Authorization": f"Bearer {other}"},
        timeout=30,
    ).json()["id"]

    with django_db_blocker.unblock():
        key = api_key_get_by_raw(raw_key=raw)
        answer = _admin(f"rev{marker[-6:]}").post(
            f"/admin/completions/apikey/{key.pk}/change/", _key_form(key, is_active="")
        )
        assert answer.status_code == 302
        rows = {str(r.id): r for r in CompletionRequest.objects.filter(id__in=ids)}
    assert {r.status for r in rows.values()} == {CompletionStatus.CANCELLED}
    assert all("API key was deactivated" in r.error["message"] for r in rows.values())
    # No new call either, everywhere within BALANCER_REGISTRY_CACHE_SECONDS.
    wait_until(lambda: client.get(f"/completions/{ids[0]}").status_code == 401, 5, "the key refused")

    time.sleep(11)  # the line refills: a request left in it would start now
    with django_db_blocker.unblock():
        assert set(CompletionRequest.objects.filter(id__in=ids).values_list("status", flat=True)) == {
            CompletionStatus.CANCELLED
        }
        assert CompletionRequest.objects.filter(id__in=ids, started_at__isnull=False).count() == 0
    # Another key's request in the same line still gets its turn.
    wait_until(
        lambda: (
            httpx.get(
                f"{web.url}/api/v1/completions/{bystander}", headers={"Authorization": f"Bearer {other}"}
            ).json()["status"]
            == "succeeded"
        ),
        30,
        "the other key's request",
    )


@pytest.mark.django_db
def test_a_request_accepted_while_its_key_was_still_cached_never_starts() -> None:
    key, _ = api_key_create(name="cached")
    request = CompletionRequest.objects.create(
        api_key=key,
        provider="mock",
        model="mock-gpt",
        payload={"model": "mock-gpt", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
    )
    ApiKey.objects.filter(pk=key.pk).update(is_active=False)  # as another process, mid-window
    completion_request_execute(request_id=str(request.id), line=None)
    request.refresh_from_db()
    assert (request.status, request.attempts) == (CompletionStatus.QUEUED, 0)  # the claim refused it
    assert completion_requests_sweep().revoked == 1
    request.refresh_from_db()
    assert request.status == CompletionStatus.CANCELLED
    assert "API key was deactivated" in request.error["message"]


@pytest.mark.django_db
def test_staff_can_cancel_queued_requests_from_the_admin() -> None:
    key, _ = api_key_create(name="victim")

    def row(status: str) -> CompletionRequest:
        return CompletionRequest.objects.create(
            api_key=key, provider="mock", model="mock-gpt", payload={"messages": []}, status=status
        )

    queued, running = row(CompletionStatus.QUEUED), row(CompletionStatus.RUNNING)
    answer = _admin("canceller").post(
        "/admin/completions/completionrequest/",
        {"action": "cancel", "_selected_action": [str(queued.pk), str(running.pk)]},
    )
    assert answer.status_code == 302
    queued.refresh_from_db()
    running.refresh_from_db()
    assert queued.status == CompletionStatus.CANCELLED
    assert queued.error["message"] == "Cancelled from the admin (by canceller)."
    assert running.status == CompletionStatus.RUNNING

    viewer = get_user_model().objects.create_user("viewer", password="pw-tests-only", is_staff=True)
    from django.contrib.auth.models import Permission

    viewer.user_permissions.set(Permission.objects.filter(codename="view_completionrequest"))
    browser = Client()
    browser.force_login(viewer)
    page = browser.get("/admin/completions/completionrequest/").content.decode()
    assert 'value="cancel"' not in page  # the action needs the change permission


@pytest.mark.django_db
def test_a_staff_users_browsable_key_honours_is_active() -> None:
    staff = get_user_model().objects.create_user("browser-user", password="pw-tests-only", is_staff=True)
    browser = Client()
    browser.force_login(staff)
    assert browser.get("/api/v1/completions", HTTP_ACCEPT="application/json").status_code == 200
    key = api_key_for_user(user=staff)
    key.is_active = False
    key.save()
    refused = browser.get("/api/v1/completions", HTTP_ACCEPT="application/json")
    assert refused.status_code in (401, 403)
    assert "deactivated" in refused.json()["error"]["message"]


@pytest.mark.django_db
def test_admin_login_is_throttled_per_address_and_a_lockout_holds_against_the_right_password(
    settings: Any,
) -> None:
    get_user_model().objects.create_superuser("ops-admin", "ops@example.com", "the-right-password")
    guesser, elsewhere = Client(REMOTE_ADDR="203.0.113.7"), Client(REMOTE_ADDR="198.51.100.2")

    def login(client: Client, password: str) -> int:
        return client.post("/admin/login/", {"username": "ops-admin", "password": password}).status_code

    limit = settings.AXES_FAILURE_LIMIT
    assert [login(guesser, f"guess-{i}") for i in range(limit - 1)] == [200] * (limit - 1)  # the form again
    assert login(guesser, "one-more-guess") == 429
    assert login(guesser, "the-right-password") == 429  # locked out: even the right one
    assert login(elsewhere, "the-right-password") == 302  # another address is not
