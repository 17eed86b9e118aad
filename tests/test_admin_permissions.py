"""Every admin action and every admin view the project added asks for the permission its effect
needs, tried as four staff roles: no permission, view, change (or delete), superuser. The effect
is what is checked (a key still active, a request still queued, a group still there, names not
shown), not only the status code."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from completions.models import ApiKey, CompletionRequest, CompletionStatus, ModelGroup
from completions.services import api_key_create

pytestmark = pytest.mark.django_db

ROLES = ["none", "view", "change", "superuser"]


def staff(role: str, model: str, *more: str) -> Client:
    """A browser signed in as staff with `role` on `model` (view_/change_/delete_<model>) and the
    codenames in `more`."""
    name = f"{role}-{uuid.uuid4().hex[:6]}"
    users = get_user_model().objects
    if role == "superuser":
        user = users.create_superuser(name, f"{name}@example.com", "pw-tests-only")
    else:
        user = users.create_user(name, password="pw-tests-only", is_staff=True)
        codenames = {"none": [], "view": [f"view_{model}"], "change": [f"view_{model}", f"change_{model}"]}
        codenames["delete"] = [f"view_{model}", f"delete_{model}"]
        user.user_permissions.set(Permission.objects.filter(codename__in=[*codenames[role], *more]))
    client = Client()
    client.force_login(user)
    return client


def act(client: Client, changelist: str, action: str, *pks: object) -> int:
    answer = client.post(changelist, {"action": action, "_selected_action": [str(pk) for pk in pks]})
    return answer.status_code


@pytest.mark.parametrize("role", ROLES)
def test_deactivating_a_key_from_the_list_needs_the_change_permission(role: str) -> None:
    victim, _ = api_key_create(name=f"victim-{role}")
    status = act(staff(role, "apikey"), "/admin/completions/apikey/", "deactivate", victim.pk)
    victim.refresh_from_db()
    allowed = role in ("change", "superuser")
    assert victim.is_active is not allowed
    assert status == (403 if role == "none" else 302 if allowed else 200)


@pytest.mark.parametrize("role", ROLES)
def test_cancelling_requests_from_the_history_needs_the_change_permission(role: str) -> None:
    key, _ = api_key_create(name=f"owner-{role}")
    queued = CompletionRequest.objects.create(
        api_key=key, provider="mock", model="mock-gpt", payload={"messages": []}
    )
    status = act(
        staff(role, "completionrequest"), "/admin/completions/completionrequest/", "cancel", queued.pk
    )
    queued.refresh_from_db()
    allowed = role in ("change", "superuser")
    assert (queued.status == CompletionStatus.CANCELLED) is allowed
    assert status == (403 if role == "none" else 302 if allowed else 200)


@pytest.mark.parametrize("role", [*ROLES, "delete"])
def test_deleting_a_group_needs_the_delete_permission(role: str) -> None:
    group = ModelGroup.objects.create(name=f"group-{role}")
    client = staff(role, "modelgroup")
    act(client, "/admin/completions/modelgroup/", "delete_selected", group.pk)
    confirmed = client.post(f"/admin/completions/modelgroup/{group.pk}/delete/", {"post": "yes"})
    allowed = role in ("delete", "superuser")
    assert ModelGroup.objects.filter(pk=group.pk).exists() is not allowed
    assert confirmed.status_code == (302 if allowed else 403)


def _dashboard(client: Client) -> tuple[int, int]:
    return client.get("/admin/dashboard/").status_code, client.get("/admin/dashboard/state.json").status_code


@pytest.mark.parametrize("role", ROLES)
def test_the_dashboard_needs_the_permission_to_view_served_models(role: str) -> None:
    page, state = _dashboard(staff(role, "servedmodel"))
    allowed = role != "none"
    assert (page, state) == ((200, 200) if allowed else (403, 403))


def test_client_key_names_on_the_dashboard_and_the_group_page_need_the_permission_to_view_keys(
    make_rate_limited_key: Callable[[str], ApiKey],
) -> None:
    limited = make_rate_limited_key(f"secret-name-{uuid.uuid4().hex[:6]}")
    group = ModelGroup.objects.create(name=f"g-{uuid.uuid4().hex[:6]}")

    def seen(client: Client) -> tuple[list[str], str]:
        keys = [k["name"] for k in client.get("/admin/dashboard/state.json").json()["keys"]]
        group_page = client.get(f"/admin/completions/modelgroup/{group.pk}/change/").content.decode()
        return keys, group_page

    keys, page = seen(staff("view", "servedmodel", "view_modelgroup"))
    assert limited.name not in keys and f"#{limited.pk}" in keys
    assert "Line now" in page
    keys, page = seen(staff("view", "servedmodel", "view_modelgroup", "view_apikey"))
    assert limited.name in keys


def test_the_admin_index_links_the_dashboard_only_for_those_who_may_read_it() -> None:
    link = 'href="/admin/dashboard/"'
    assert link not in staff("none", "servedmodel").get("/admin/").content.decode()
    assert link in staff("view", "servedmodel").get("/admin/").content.decode()


@pytest.fixture
def make_rate_limited_key() -> Callable[[str], ApiKey]:
    """A client key with a rate limit of its own (so the dashboard lists its line)."""
    from ratelimit.models import KeyQuota

    def make(name: str) -> ApiKey:
        key, _ = api_key_create(name=name)
        KeyQuota.objects.create(api_key=key, requests_per_minute=60)
        return key

    return make
