"""Health and readiness, the admin, the browsable API and the OpenAPI schema."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.test import Client, override_settings

from completions.config import config_apply
from completions.models import CompletionRequest, ModelGroup, ServedModel
from completions.services import api_key_create


def test_health_and_ready_over_http(web: Any, worker: Any) -> None:
    assert httpx.get(f"{web.url}/health").json() == {"status": "ok"}
    r = httpx.get(f"{web.url}/ready")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ready" and body["missing"] == []
    assert worker.hostname in body["checks"]["workers"]


@pytest.mark.django_db
def test_ready_is_503_naming_what_is_missing(client: Client) -> None:
    # No worker has reported within the (impossible) staleness bound.
    with override_settings(BALANCER_WORKER_STALE_SECONDS=-3600):
        r = client.get("/ready")
    assert r.status_code == 503
    assert r.json()["missing"] == ["worker"]
    assert r.json()["checks"]["database"] == "ok" and r.json()["checks"]["redis"] == "ok"


def test_openapi_schema_and_docs_are_served(web: Any) -> None:
    schema = httpx.get(f"{web.url}/api/schema/", headers={"Accept": "application/json"})
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/api/v1/completions", "/api/v1/completions/{id}"} <= set(paths)
    docs = httpx.get(f"{web.url}/api/docs/")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert "cdn" not in docs.text.lower()  # assets are served locally


@pytest.fixture
def staff(db: None) -> Any:
    return get_user_model().objects.create_superuser("root", "root@example.com", "pw-for-tests-only")


@pytest.mark.django_db
def test_admin_lists_request_history_read_only(client: Client, staff: Any) -> None:
    config_apply({"providers": [{"name": "mock", "kind": "mock", "models": ["mock-gpt"]}]})
    key, _ = api_key_create(name="history")
    request = CompletionRequest.objects.create(
        api_key=key,
        provider="mock",
        model="mock-gpt",
        payload={"messages": [{"role": "user", "content": "hi"}]},
    )
    client.force_login(staff)
    changelist = client.get("/admin/completions/completionrequest/", {"status__exact": "queued"})
    assert changelist.status_code == 200
    assert str(request.id)[:8] in changelist.content.decode()
    assert client.get("/admin/completions/completionrequest/", {"q": str(request.id)}).status_code == 200
    # Found by the first characters of its id, as the list shows them.
    by_prefix = client.get("/admin/completions/completionrequest/", {"q": str(request.id)[:6]})
    assert str(request.id)[:8] in by_prefix.content.decode()
    nothing = client.get("/admin/completions/completionrequest/", {"q": "zz"}).content.decode()
    assert str(request.id)[:8] not in nothing
    detail = client.get(f"/admin/completions/completionrequest/{request.id}/change/")
    assert detail.status_code == 200
    page = detail.content.decode()
    assert "Save" not in page  # read-only
    assert "<pre" in page and "waited in line" in page  # bodies pretty-printed, times readable
    assert client.get("/admin/completions/completionrequest/add/").status_code == 403
    assert client.get("/admin/completions/provider/").status_code == 200
    assert client.get("/admin/completions/apikey/").status_code == 200


@pytest.mark.django_db
def test_admin_shows_model_groups_with_their_deployments_and_line(client: Client, staff: Any) -> None:
    config_apply(
        {
            "groups": [{"name": "pooled", "policy": "round_robin"}],
            "providers": [
                {"name": "mock", "kind": "mock", "models": [{"name": "mock-a", "group": "pooled"}]},
                {
                    "name": "mock2",
                    "kind": "mock",
                    "models": [{"name": "mock-b", "group": "pooled", "weight": 2}],
                },
            ],
        }
    )
    group = ModelGroup.objects.get(name="pooled")
    client.force_login(staff)
    listing = client.get("/admin/completions/modelgroup/").content.decode()
    assert "pooled" in listing and "Round-robin" in listing
    page = client.get(f"/admin/completions/modelgroup/{group.pk}/change/").content.decode()
    assert "mock-a" in page and "mock-b" in page  # the deployments, inline
    assert "mock2/mock-b (weight 2)" in page and "available" in page  # the line now


@pytest.mark.django_db
def test_admin_warns_before_deleting_a_group_requests_wait_for(client: Client, staff: Any) -> None:
    config_apply(
        {"providers": [{"name": "mock", "kind": "mock", "models": [{"name": "mock-a", "group": "busy"}]}]}
    )
    group = ModelGroup.objects.get(name="busy")
    key, _ = api_key_create(name="waiting")
    for _ in range(3):
        CompletionRequest.objects.create(
            api_key=key, provider="mock", model="mock-a", group="busy", payload={}
        )
    client.force_login(staff)
    page = client.get(f"/admin/completions/modelgroup/{group.pk}/delete/").content.decode()
    assert "3 queued request(s) wait for busy" in page and "its line drains" in page


@pytest.mark.django_db
def test_admin_warns_before_deleting_a_model_requests_wait_for(client: Client, staff: Any) -> None:
    config_apply({"providers": [{"name": "mock", "kind": "mock", "models": ["mock-alone"]}]})
    served = ServedModel.objects.get(name="mock-alone")
    key, _ = api_key_create(name="waiting")
    for _ in range(2):
        CompletionRequest.objects.create(api_key=key, provider="mock", model="mock-alone", payload={})
    client.force_login(staff)
    page = client.get(f"/admin/completions/servedmodel/{served.pk}/delete/").content.decode()
    assert "2 queued request(s) wait for mock/mock-alone" in page and "disable it (they drain)" in page


@pytest.mark.django_db
def test_admin_needs_a_staff_login(client: Client) -> None:
    r = client.get("/admin/completions/completionrequest/")
    assert r.status_code == 302 and "/admin/login/" in r["Location"]


@pytest.mark.django_db
def test_api_key_created_in_the_admin_is_shown_once_and_stored_hashed(client: Client, staff: Any) -> None:
    client.force_login(staff)
    form = {
        "name": "from-admin",
        "is_active": "on",
        "weight": "1",
        "max_priority": "default",
        # The key-quota inline, left empty.
        "quota-TOTAL_FORMS": "0",
        "quota-INITIAL_FORMS": "0",
        "quota-MIN_NUM_FORMS": "0",
        "quota-MAX_NUM_FORMS": "1",
        # The budget inline, left empty.
        "budget-TOTAL_FORMS": "0",
        "budget-INITIAL_FORMS": "0",
    }
    r = client.post("/admin/completions/apikey/add/", form)
    # The page itself, not a redirect to a page that reads the key back from a cookie.
    assert r.status_code == 200 and "no-store" in r["Cache-Control"]
    page = r.content.decode()
    start = page.index('id="new-api-key"')
    raw = page[page.index(">", start) + 1 : page.index("</code>", start)]
    from completions.selectors import api_key_get_by_raw

    assert api_key_get_by_raw(raw_key=raw).name == "from-admin"
    for cookie in r.cookies.values():  # neither the messages cookie nor any other
        assert raw not in cookie.value
    assert raw not in str(dict(client.session.items()))  # nor the session (stored in the database)
    listing = client.get("/admin/completions/apikey/").content.decode()
    assert raw not in listing
    key_page = client.get(f"/admin/completions/apikey/{api_key_get_by_raw(raw_key=raw).pk}/change/")
    assert raw not in key_page.content.decode()
    assert "Requests (24 h)" in listing and "Tokens (24 h)" in listing


@pytest.mark.django_db
def test_browsable_api_works_for_a_logged_in_staff_user(client: Client, staff: Any) -> None:
    client.force_login(staff)
    r = client.get("/api/v1/completions", HTTP_ACCEPT="text/html")
    assert r.status_code == 200
    assert "text/html" in r["Content-Type"]
    assert "Completion List" in r.content.decode()


def test_a_model_added_while_the_worker_runs_is_served_within_seconds(
    api: httpx.Client, django_db_blocker: Any
) -> None:
    with django_db_blocker.unblock():
        config_apply(
            {
                "providers": [
                    {
                        "name": "mock",
                        "kind": "mock",
                        "models": [{"name": "mock-new", "options": {"latency_ms": 0}}],
                    }
                ]
            }
        )
    r = api.post(
        "/completions",
        json={"provider": "mock", "model": "mock-new", "payload": {"messages": []}, "wait": 30},
    )
    assert r.json()["status"] == "succeeded"


@pytest.mark.django_db
def test_admin_shows_quotas_with_the_live_state_of_each_line(
    client: Client, staff: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):  # the quota goes into Redis on commit
        config_apply(
            {
                "providers": [
                    {
                        "name": "mock",
                        "kind": "mock",
                        "models": [
                            {
                                "name": "mock-admin-quota",
                                "quota": {"requests_per_minute": 60, "margin": 0, "margin_seconds": 0},
                            }
                        ],
                    }
                ]
            }
        )
    client.force_login(staff)
    page = client.get("/admin/ratelimit/quota/").content.decode()
    assert "mock/mock-admin-quota" in page
    assert "requests 60/60" in page  # a full bucket: 60 of 60


def test_metrics_describe_the_whole_deployment(api: httpx.Client, web: Any, marker: str) -> None:
    payload = {"max_tokens": 3, "messages": [{"role": "user", "content": marker}]}
    assert (
        api.post("/completions", json={"provider": "openai", "model": "gpt-test", "payload": payload}).json()[
            "status"
        ]
        == "succeeded"
    )
    text = httpx.get(f"{web.url}/metrics").text
    assert 'balancer_upstream_responses_total{model="openai/gpt-test",status="200"}' in text
    assert 'balancer_tokens_total{kind="output",model="openai/gpt-test"}' in text
    assert 'balancer_queue_wait_seconds_bucket{le="+Inf",model="openai/gpt-test"}' in text
    assert 'balancer_upstream_seconds_count{model="openai/gpt-test"}' in text
    assert 'balancer_bucket_level{bucket="requests",model="openai/gpt-rpm"}' in text
    assert "balancer_in_flight" in text and "balancer_requests" in text
    # Model groups: per deployment, and per flow (client key) of a group's line.
    assert (
        api.post("/completions", json={"model": "gpt-fair", "payload": payload, "wait": 30}).json()["status"]
        == "succeeded"
    )
    text = httpx.get(f"{web.url}/metrics").text
    assert 'balancer_bucket_level{bucket="requests",model="mock/mock-fair"}' in text
    assert 'balancer_deployment_cooling_seconds{group="gpt-fair",model="mock/mock-fair"} 0.0' in text
    assert 'balancer_flow_share{flow="' in text and 'group="gpt-fair"' in text


@pytest.mark.django_db
def test_metrics_can_require_a_token(client: Client) -> None:
    with override_settings(BALANCER_METRICS_TOKEN="scrape-me"):
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me").status_code == 200


def test_worker_log_lines_carry_the_request_id(api: httpx.Client, run_dir: Any, marker: str) -> None:
    payload = {
        "messages": [{"role": "user", "content": marker}],
        "fake": {"fail_times": 1, "key": marker, "status": 503},
    }
    done = api.post(
        "/completions", json={"provider": "openai", "model": "gpt-test", "payload": payload}
    ).json()
    assert done["status"] == "succeeded" and done["attempts"] == 2
    logs = "".join(p.read_text(errors="replace") for p in run_dir.glob("logs/worker-*.log"))
    tagged = [line for line in logs.splitlines() if f"[{done['id']}]" in line]
    assert any("attempt 1 failed" in line and "trying again" in line for line in tagged)


def test_json_log_format_has_the_request_id() -> None:
    import io
    import json
    import logging

    from balancer_project.logs import JsonFormatter, RequestIdFilter, request_context

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    log = logging.getLogger("tests.json")
    log.addHandler(handler)
    log.propagate = False
    with request_context("abc-123"):
        log.warning("hello %s", "there")
    entry = json.loads(stream.getvalue())
    assert (
        entry["request_id"] == "abc-123" and entry["message"] == "hello there" and entry["level"] == "WARNING"
    )


def test_the_undocumented_parts_of_djangos_asgi_handler_ours_builds_on_are_still_there() -> None:
    """completions/serving.py calls these methods of ASGIHandler (see its docstring for
    why it is not Django's own handler): a Django upgrade that renames or reshapes one fails here,
    not in production."""
    import inspect

    from django.core.handlers.asgi import ASGIHandler

    expected = {
        "read_body": ["self", "receive"],
        "create_request": ["self", "scope", "body_file"],
        "send_response": ["self", "response", "send"],
        "listen_for_disconnect": ["self", "receive"],
        "get_response": ["self", "request"],
        "load_middleware": ["self", "is_async"],
    }
    found = {name: list(inspect.signature(getattr(ASGIHandler, name)).parameters) for name in expected}
    assert found == expected
    assert inspect.iscoroutinefunction(ASGIHandler.read_body)
    assert inspect.iscoroutinefunction(ASGIHandler.send_response)
    assert inspect.iscoroutinefunction(ASGIHandler.listen_for_disconnect)
    assert isinstance(ASGIHandler.chunk_size, int)
